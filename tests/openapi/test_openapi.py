"""surefoot.openapi: a real FastAPI app's document, enriched, validated by
``openapi-spec-validator``; what it declares is what the middlewares really answer."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
from examples.openapi.app import IDEMPOTENCY, IDEMPOTENCY_ROUTES, RATE_LIMITS, create_app
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from openapi_spec_validator import validate

from _support import GUARD
from surefoot.errors import (
    catalogue,
    problem_document,
)
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.openapi import EMITTED, PROBLEM_SCHEMA, enrich, install
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

KEY_PARAMETER = {"$ref": "#/components/parameters/Idempotency-Key"}
OPTIONAL_KEY_PARAMETER = {"$ref": "#/components/parameters/Idempotency-Key.optional"}
SETTINGS: dict[str, Any] = {
    "idempotency": IDEMPOTENCY,
    "idempotency_routes": IDEMPOTENCY_ROUTES,
    "rate_limits": RATE_LIMITS,
}


@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    """The example app's document as FastAPI makes it, before surefoot."""
    app = create_app()
    return get_openapi(title=app.title, version=app.version, routes=app.routes)


@pytest.fixture(scope="module")
def enriched() -> dict[str, Any]:
    """The example app's ``/openapi.json``."""
    return create_app().openapi()


def _headers(response: dict[str, Any]) -> set[str]:
    return set(response.get("headers", {}))


# -- the document ---------------------------------------------------------------------------


def test_the_enriched_document_is_valid_openapi(enriched: dict[str, Any]) -> None:
    assert enriched["openapi"].startswith("3.1")
    validate(enriched)


def test_the_document_served_is_the_enriched_one(enriched: dict[str, Any]) -> None:
    app = create_app()

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            response = await c.get("/openapi.json")
            assert response.status_code == 200
            return response.json()  # type: ignore[no-any-return]

    assert anyio.run(fetch) == enriched
    assert app.openapi() is app.openapi() is app.openapi_schema


@pytest.mark.parametrize(
    ("method", "path", "parameter", "statuses", "rate_limited"),
    [
        # A read: never a key; limited by "default".
        ("get", "/charges/{charge_id}", None, {"200", "422", "429"}, True),
        # A write needing a key, and limited twice over ("default" and "charges").
        (
            "post",
            "/charges",
            KEY_PARAMETER,
            {"201", "400", "409", "413", "422", "429", "503"},
            True,
        ),
        # Left out of the idempotency routes: no key, no key problems; still limited.
        ("post", "/webhooks/{provider}", None, {"200", "422", "429"}, True),
        # Exempt from every limit, and a GET: nothing added at all.
        ("get", "/health", None, {"200"}, False),
    ],
)
def test_each_operation_declares_what_the_middlewares_do_to_it(
    enriched: dict[str, Any],
    method: str,
    path: str,
    parameter: dict[str, str] | None,
    statuses: set[str],
    rate_limited: bool,
) -> None:
    op = enriched["paths"][path][method]
    params = [p for p in op.get("parameters", ()) if p.get("in") != "path"]
    assert params == ([parameter] if parameter else [])
    assert set(op["responses"]) == statuses
    for status, response in op["responses"].items():
        assert ({"RateLimit", "RateLimit-Policy"} <= _headers(response)) is rate_limited, status
        if status.startswith("2"):
            assert ("Idempotent-Replayed" in _headers(response)) is (parameter is not None)
    if rate_limited:
        too_many = op["responses"]["429"]
        assert too_many["x-surefoot-problems"] == ["rate_limit_exceeded"]
        assert {"Retry-After", "X-Request-Id"} <= _headers(too_many)


def test_a_write_lists_the_key_problems_from_the_catalogue(enriched: dict[str, Any]) -> None:
    responses = enriched["paths"]["/charges"]["post"]["responses"]
    codes = {status: r.get("x-surefoot-problems") for status, r in responses.items()}
    assert codes == {
        "201": None,
        "400": ["idempotency_key_invalid", "idempotency_key_missing"],
        "409": [
            "idempotency_outcome_unknown",
            "idempotency_request_in_progress",
            "idempotency_response_not_stored",
        ],
        "413": ["request_body_too_large"],
        # FastAPI's own 422 (validation) is kept, and may be surefoot's problem too.
        "422": ["idempotency_key_reused"],
        "429": ["rate_limit_exceeded"],
        "503": ["store_capacity_exceeded", "store_unavailable"],
    }
    by_code = {cls.code: cls for cls in catalogue()}
    for status, listed in codes.items():
        for code in listed or ():
            assert by_code[code].status == int(status)
            example = responses[status]["content"]["application/problem+json"]["examples"][code]
            assert example["value"]["title"] == by_code[code].title
    validation = responses["422"]
    assert validation["description"] == "Validation Error"
    assert set(validation["content"]) == {"application/json", "application/problem+json"}
    missing = responses["400"]["content"]["application/problem+json"]["examples"]
    assert missing["idempotency_key_missing"]["value"]["path"] == "/charges"
    assert not {"Idempotent-Replayed"} & _headers(responses["400"])


def test_a_response_the_app_declared_is_kept_and_merged(
    plain: dict[str, Any], enriched: dict[str, Any]
) -> None:
    before = plain["paths"]["/charges/{charge_id}/refunds"]["post"]["responses"]["409"]
    after = enriched["paths"]["/charges/{charge_id}/refunds"]["post"]["responses"]["409"]
    assert before == {"description": "The charge is already refunded."}
    assert after["description"] == before["description"]
    assert set(after["content"]) == {"application/problem+json"}
    # The app's 409 may be a replay; surefoot's own 409s never are.
    assert {"Idempotent-Replayed", "Retry-After", "RateLimit"} <= _headers(after)


def test_the_key_parameter_and_the_problem_schema_are_components(
    enriched: dict[str, Any],
) -> None:
    components = enriched["components"]
    key = components["parameters"]["Idempotency-Key"]
    assert key["in"] == "header"
    assert key["required"] is True
    assert key["schema"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]+$",
    }
    assert components["schemas"]["Problem"] == PROBLEM_SCHEMA
    assert set(components["headers"]) == {
        "Idempotent-Replayed",
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "X-Request-Id",
    }


def test_every_example_is_a_valid_problem(enriched: dict[str, Any]) -> None:
    checker = jsonschema.Draft202012Validator(PROBLEM_SCHEMA)
    for cls, fields in EMITTED.items():
        checker.validate(problem_document(cls(**fields), request_id="r"))
    for item in enriched["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                media = response.get("content", {}).get("application/problem+json")
                for example in (media or {}).get("examples", {}).values():
                    checker.validate(example["value"])


def test_the_input_is_not_changed_and_enriching_twice_is_enriching_once(
    plain: dict[str, Any],
) -> None:
    before = copy.deepcopy(plain)
    once = enrich(plain, **SETTINGS)
    assert plain == before
    assert once != plain
    assert enrich(once, **SETTINGS) == once
    once["components"]["schemas"]["Problem"]["title"] = "changed"
    assert PROBLEM_SCHEMA["title"] == "Problem"


# -- what the middlewares really answer -----------------------------------------------------


Served = tuple[httpx.AsyncClient, anyio.Event, anyio.Event]


@pytest.fixture
async def served(clock: ManualClock) -> AsyncIterator[Served]:
    """A client of a FastAPI app, and two events: ``POST /slow`` sets the first, then
    waits for the second; ``POST /pay`` is limited to 3 a minute."""
    entered, release = anyio.Event(), anyio.Event()
    app = FastAPI()

    @app.post("/slow", status_code=201)
    async def slow(request: Request) -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"ok": "yes"}

    @app.post("/pay", status_code=201)
    async def pay(request: Request) -> dict[str, Any]:
        return {"body": (await request.body()).decode()}

    policies = [RateLimitPolicy("pay", limits=["3/minute"], routes=["POST /pay"])]
    install(app, idempotency=IdempotencyPolicy(), rate_limits=policies)
    store = MemoryStore()
    app.add_middleware(IdempotencyMiddleware, store=store, clock=clock, hooks=[])
    app.add_middleware(RateLimitMiddleware, store=store, policies=policies, clock=clock, hooks=[])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, entered, release
        release.set()


def _check_declared(schema: dict[str, Any], path: str, real: httpx.Response) -> None:
    """``real`` is one of the responses ``schema`` declares for ``POST path``."""
    assert real.headers["content-type"] == "application/problem+json"
    body = real.json()
    jsonschema.validate(body, schema["components"]["schemas"]["Problem"])
    declared = schema["paths"][path]["post"]["responses"][str(real.status_code)]
    assert body["code"] in declared["x-surefoot-problems"]
    example = declared["content"]["application/problem+json"]["examples"][body["code"]]
    assert set(example["value"]) == set(body)  # the members surefoot sends, no more, no less
    for header in declared["headers"]:
        assert header.lower() in real.headers, header


@pytest.mark.anyio
async def test_the_declared_problems_are_what_the_middlewares_answer(
    served: Served,
) -> None:
    client, entered, release = served
    schema = (await client.get("/openapi.json")).json()
    validate(schema)

    missing = await client.post("/pay", json={"amount": 1})
    assert missing.status_code == 400
    _check_declared(schema, "/pay", missing)

    first = await client.post("/pay", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    reused = await client.post("/pay", json={"amount": 2}, headers={"Idempotency-Key": "k1"})
    assert reused.status_code == 422
    _check_declared(schema, "/pay", reused)

    over = await client.post("/pay", json={"amount": 3}, headers={"Idempotency-Key": "k2"})
    assert over.status_code == 429
    _check_declared(schema, "/pay", over)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(client.post, "/slow", headers={"Idempotency-Key": "s"}))
        with anyio.fail_after(GUARD):
            await entered.wait()  # the first request holds the key
        busy = await client.post("/slow", headers={"Idempotency-Key": "s"})
        release.set()
    assert busy.status_code == 409
    _check_declared(schema, "/slow", busy)
    assert busy.json()["code"] == "idempotency_request_in_progress"
