"""``enrich``: what the middlewares do to an API, written into its OpenAPI 3.x document.

Theory of operation: for every operation (a path of ``paths`` and one of its methods),
work out what ``IdempotencyMiddleware`` and ``RateLimitMiddleware``, configured as given,
do to its requests, then declare it:

1. Match the operation against the middlewares' route templates with their own
   ``RouteTable`` (``surefoot._routes``) and ``RateLimitPolicy.route_for``. The
   document's path is matched as written: a ``{name}`` segment stands for any value and
   matches a template's ``{param}`` or wildcard, never a literal segment (an exemption for
   ``GET /users/me`` is not one for ``GET /users/{id}``).
2. An operation whose method the idempotency policy protects gets the key's header
   parameter (required exactly when a keyless request is refused) and the problem
   responses the middleware can answer with; its own responses may be replays
   (``Idempotent-Replayed``).
3. An operation that an enforced (not shadow) rate-limit policy covers gets 429 with
   ``Retry-After``, 503 where a policy fails closed, and the ``RateLimit`` and
   ``RateLimit-Policy`` fields (draft-10), or the legacy ``X-RateLimit-*`` trio, on
   every response.

Rule 1: the input is never changed: ``enrich`` returns a new document, which shares no
        dict or list with it (nor with itself, as a generated document may).
Rule 2: enriching is idempotent: ``enrich(enrich(d)) == enrich(d)``.
Rule 3: what the app declared wins. A response the app declared for a status keeps its
        description and content; surefoot adds its ``application/problem+json`` media
        type only where the response has none, and its headers only where the response
        does not name them. A response given by ``$ref`` is left as it is.
Rule 4: every problem declared is one the middleware really sends: its status, code and
        title come from the catalogue (``surefoot.errors``), its example is built by
        ``problem_document`` from the extension members the middleware passes
        (``EMITTED``), and its ``x-surefoot-problems`` lists the codes.
Rule 5: the components (``Problem``, the headers, the key's parameter) are added once
        and reused through ``$ref``. A name the document already uses for something
        else is left to it and surefoot's gets the prefix ``Surefoot``; if that is taken
        too, ``ConfigurationError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surefoot._routes import RouteTable
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    IdempotencyKeyAmbiguous,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    IdempotencyRecordsExceeded,
    IdempotencyRequestInProgress,
    IdempotencyResponseNotStored,
    QuotaExceeded,
    RateLimitExceeded,
    RequestBodyTooLarge,
    StoreCapacityExceeded,
    StoreUnavailable,
    SurefootError,
    problem_document,
)
from surefoot.idempotency import IdempotencyPolicy

if TYPE_CHECKING:
    from surefoot.ratelimit import RateLimitPolicy

__all__ = ["EMITTED", "PROBLEM_SCHEMA", "enrich"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: The marker of a response surefoot declared or merged into: the problem codes it may carry.
MARKER = "x-surefoot-problems"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

#: The problems the middlewares send, each with sample values of the members the
#: middleware passes when it raises it (so, of the problem document's extension members,
#: those not private to the detail text).
EMITTED: dict[type[SurefootError], dict[str, Any]] = {
    IdempotencyKeyMissing: {"method": "POST", "path": "/charges", "header": "Idempotency-Key"},
    IdempotencyKeyInvalid: {
        "header": "Idempotency-Key",
        "reason": "it is longer than 255 characters",
    },
    IdempotencyKeyAmbiguous: {"header": "Idempotency-Key", "field": "idempotency_key"},
    RequestBodyTooLarge: {"limit": 1048576},
    IdempotencyRequestInProgress: {"retry_after": 1},
    IdempotencyOutcomeUnknown: {"retry_after": 5},
    IdempotencyResponseNotStored: {"original_status": 201},
    IdempotencyKeyReused: {},
    IdempotencyRecordsExceeded: {"limit": 10000, "kind": "in all", "retry_after": 60},
    StoreUnavailable: {"retry_after": 1},
    StoreCapacityExceeded: {"retry_after": 1},
    **{
        cls: {
            "limit": "100 requests per minute",
            "wait": "7 seconds",
            "policy": "default",
            "retry_after": 7,
            "violated-policies": ["default"],
        }
        for cls in (RateLimitExceeded, QuotaExceeded, ConcurrencyLimitExceeded)
    },
}
_LIMIT_PROBLEMS: dict[str | None, type[SurefootError]] = {
    "quota": QuotaExceeded,
    "concurrency": ConcurrencyLimitExceeded,
}

#: An RFC 9457 problem document as surefoot sends it (``surefoot.errors.problem_document``).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": (
        "An RFC 9457 problem document (application/problem+json) from surefoot's catalogue: "
        "branch on `code`, quote `request_id` to support."
    ),
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "format": "uri", "description": "The problem type's URI."},
        "title": {"type": "string", "description": "The problem type's summary."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What happened and what to do next."},
        "instance": {"type": "string", "format": "uri-reference"},
        "code": {"type": "string", "description": "A stable machine code."},
        "request_id": {"type": "string", "description": "The request's id (X-Request-Id)."},
        "retry_after": {
            "type": "integer",
            "minimum": 1,
            "description": "Seconds to wait before retrying (as Retry-After).",
        },
        "policy": {"type": "string", "description": "The rate-limit policy that refused."},
        "violated-policies": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Every rate-limit policy the request went over.",
        },
        "method": {"type": "string"},
        "path": {"type": "string"},
        "header": {"type": "string", "description": "The header that carries the key."},
        "field": {"type": "string", "description": "The body field that carries the key."},
        "reason": {"type": "string", "description": "Why the request was refused."},
        "limit": {"type": "integer", "description": "The largest request body, in bytes."},
        "original_status": {
            "type": "integer",
            "description": "The status of the response that was too large to replay.",
        },
    },
    "additionalProperties": True,
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}
_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit": {
        "description": (
            "The client's remaining quota per limit (draft-ietf-httpapi-ratelimit-headers-10): "
            "r, remaining requests; t, seconds until more quota is available."
        ),
        "schema": {"type": "string"},
        "example": '"default";r=99;t=1',
    },
    "RateLimit-Policy": {
        "description": (
            "The limits that apply (draft-ietf-httpapi-ratelimit-headers-10): "
            "q, the quota; w, the window in seconds."
        ),
        "schema": {"type": "string"},
        "example": '"default";q=100;w=60',
    },
    "Retry-After": _RETRY_AFTER,
    "X-RateLimit-Limit": {
        "description": "The limit closest to exhaustion: its quota.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "The limit closest to exhaustion: requests left.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": (
            "The limit closest to exhaustion: when it is full again "
            "(seconds from now, or an epoch time if so configured)."
        ),
        "schema": {"type": "integer", "minimum": 0},
    },
    "Idempotent-Replayed": {
        "description": (
            "true when this response is the stored response of an earlier request with "
            "the same idempotency key, replayed without executing again."
        ),
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Idempotency-Status": {
        "description": (
            "unprotected when the idempotency store was down and the request executed "
            "without protection (the route's on_store_error is fail_open)."
        ),
        "schema": {"type": "string", "enum": ["unprotected"]},
    },
    "X-Request-Id": {
        "description": "The request's id, also in the problem's request_id.",
        "schema": {"type": "string"},
    },
}
_LEGACY = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9._-]")
_PARAMETERS = "#/components/parameters/"


@dataclass(frozen=True, slots=True)
class _Operation:
    """What the middlewares do to one operation."""

    key: IdempotencyPolicy | None
    limited: bool
    problems: tuple[type[SurefootError], ...]


def enrich(
    schema: Mapping[str, Any],
    *,
    idempotency: IdempotencyPolicy | None = None,
    idempotency_routes: Mapping[str, IdempotencyPolicy | None] | None = None,
    rate_limits: Sequence[RateLimitPolicy] = (),
    headers: bool = True,
    legacy_headers: bool = False,
    problem_base: str = DEFAULT_PROBLEM_BASE,
) -> dict[str, Any]:
    """The OpenAPI document ``schema`` with what the middlewares add to the API.

    Example:
        >>> enrich(
        ...     app.openapi(),
        ...     idempotency=IdempotencyPolicy(),
        ...     idempotency_routes={"/health": None},
        ...     rate_limits=[RateLimitPolicy("default", limits=["100/minute"])],
        ... )

    Args:
        schema: an OpenAPI 3.0 or 3.1 document; it is not changed.
        idempotency: the ``policy`` given to ``IdempotencyMiddleware``; None, with
            ``idempotency_routes`` None too: the app has no ``IdempotencyMiddleware``.
        idempotency_routes: its ``routes`` (the default policy is then
            ``IdempotencyPolicy()`` if ``idempotency`` is None, as in the middleware).
        rate_limits: the ``policies`` given to ``RateLimitMiddleware``.
        headers, legacy_headers: the ``RateLimitMiddleware`` arguments of those names.
        problem_base: the middlewares' ``problem_base``.

    Raises:
        ConfigurationError: ``schema`` is not an OpenAPI 3.x document, or a component
            name surefoot needs is taken twice over (Rule 5).
    """
    version = schema.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        raise ConfigurationError(
            f"surefoot.openapi.enrich: expected an OpenAPI 3.x document, got openapi={version!r}"
        )
    doc: dict[str, Any] = _tree(schema)
    default = idempotency
    if default is None and idempotency_routes is not None:
        default = IdempotencyPolicy()
    routes = RouteTable((idempotency_routes or {}).items(), strict=lambda p: p is None)
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            found = _operation(method.upper(), path, default, routes, rate_limits)
            _declare(
                doc, method.upper(), path, op, item, found, headers, legacy_headers, problem_base
            )
    return doc


def _operation(
    method: str,
    path: str,
    default: IdempotencyPolicy | None,
    routes: RouteTable[IdempotencyPolicy | None],
    rate_limits: Sequence[RateLimitPolicy],
) -> _Operation:
    """What the middlewares do to ``method path`` (Rule 1 of the theory)."""
    key = default
    matched = routes.match(method, path)
    if matched is not None:
        key = matched[1]
    if key is not None and not key.applies_to(method):
        key = None
    problems: list[type[SurefootError]] = [] if key is None else _key_problems(key)
    enforced = [p for p in rate_limits if not p.shadow and p.route_for(method, path) is not None]
    for policy in enforced:
        limits = [*policy.limits, *_flat(policy.tiers), *_flat(policy.overrides)]
        problems += [_LIMIT_PROBLEMS.get(limit.algorithm, RateLimitExceeded) for limit in limits]
        if policy.on_store_error == "fail_closed":
            problems.append(StoreUnavailable)
    unique = sorted(set(problems), key=lambda c: (c.status, c.code))
    return _Operation(key, bool(enforced), tuple(unique))


def _flat(table: Mapping[str, Sequence[Any]]) -> list[Any]:
    return [limit for limits in table.values() for limit in limits]


def _key_problems(policy: IdempotencyPolicy) -> list[type[SurefootError]]:
    """What ``IdempotencyMiddleware`` can answer on a route ``policy`` protects."""
    problems: list[type[SurefootError]] = [
        IdempotencyKeyInvalid,
        RequestBodyTooLarge,
        IdempotencyRequestInProgress,
        IdempotencyResponseNotStored,
        IdempotencyKeyReused,
        StoreCapacityExceeded,
    ]
    if policy.required and not policy.rollout:  # rollout lets keyless requests through
        problems.append(IdempotencyKeyMissing)
    if policy.body_field is not None:
        problems.append(IdempotencyKeyAmbiguous)
    if "unknown" in (policy.on_lease_expiry, policy.on_server_error):
        problems.append(IdempotencyOutcomeUnknown)
    if policy.max_records_per_principal or policy.max_unknown_per_principal:
        problems.append(IdempotencyRecordsExceeded)
    if policy.on_store_error == "fail_closed":
        problems.append(StoreUnavailable)
    return problems


def _declare(
    doc: dict[str, Any],
    method: str,
    path: str,
    op: dict[str, Any],
    item: dict[str, Any],
    found: _Operation,
    headers: bool,
    legacy_headers: bool,
    base: str,
) -> None:
    """Write what ``found`` says into the operation ``op`` of the path item ``item``."""
    responses: dict[str, Any] = op.setdefault("responses", {})
    key = found.key
    facts: dict[str, Any] = {"method": method, "path": path}
    if key is not None:
        facts["header"] = key.header
        facts["field"] = key.body_field
    if key is not None:
        _add_key_parameter(doc, op, item, key)
        own = [r for r in responses.values() if "$ref" not in r and MARKER not in r]
        for response in own:  # Rule 2: what surefoot declared is never a replay
            _add_header(doc, response, "Idempotent-Replayed")
            if key.on_store_error == "fail_open":
                _add_header(doc, response, "Idempotency-Status")
    by_status: dict[int, list[type[SurefootError]]] = {}
    for cls in found.problems:
        by_status.setdefault(cls.status, []).append(cls)
    for status, classes in by_status.items():
        declared = responses.get(str(status))
        if declared is None:
            title = "; ".join(f"{c.title} (`{c.code}`)" for c in classes)
            declared = responses[str(status)] = {"description": title}
        elif "$ref" in declared:
            continue
        _add_problems(doc, declared, classes, base, facts)
    if found.limited:
        names = (["RateLimit", "RateLimit-Policy"] if headers else []) + (
            list(_LEGACY) if legacy_headers else []
        )
        for response in responses.values():
            if "$ref" not in response:
                for name in names:
                    _add_header(doc, response, name)
    op["responses"] = dict(sorted(responses.items(), key=_status_order))


def _add_problems(
    doc: dict[str, Any],
    response: dict[str, Any],
    classes: Sequence[type[SurefootError]],
    base: str,
    facts: Mapping[str, Any],
) -> None:
    """Declare on ``response`` that it may be any of the problems ``classes`` (Rule 3)."""
    content = response.setdefault("content", {})
    if PROBLEM_MEDIA_TYPE not in content:
        content[PROBLEM_MEDIA_TYPE] = {
            "schema": _component(doc, "schemas", "Problem", PROBLEM_SCHEMA),
            "examples": {
                cls.code: {"summary": cls.title, "value": _example(cls, base, facts)}
                for cls in classes
            },
        }
    _add_header(doc, response, "X-Request-Id")
    if any("retry_after" in EMITTED[cls] for cls in classes):
        _add_header(doc, response, "Retry-After")
    codes = set(response.get(MARKER, ())) | {cls.code for cls in classes}
    response[MARKER] = sorted(codes)


def _example(cls: type[SurefootError], base: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The problem document the middleware sends for ``cls``: sample values, with the
    operation's own ``facts`` (its method, path, key header) where ``cls`` has them."""
    sample = EMITTED[cls]
    fields = {name: facts.get(name, value) for name, value in sample.items()}
    return problem_document(cls(**fields), request_id="req_5f2b1c0e9a7d", base=base)


def _add_key_parameter(
    doc: dict[str, Any], op: dict[str, Any], item: dict[str, Any], policy: IdempotencyPolicy
) -> None:
    """Declare the key's header on ``op`` unless the operation or its path item does."""
    header = policy.header.lower()
    for parameter in [*item.get("parameters", ()), *op.get("parameters", ())]:
        target = _resolve(doc, parameter)
        if target.get("in") == "header" and str(target.get("name", "")).lower() == header:
            return
    required = policy.required and not policy.rollout and policy.body_field is None
    where = f"the {policy.header} header"
    if policy.body_field is not None:
        where += f" or the body field `{policy.body_field}`"
    description = (
        f"A unique key per logical operation (a UUID v4), sent again unchanged on every retry, "
        f"in {where}: a retry with the same key replays the first response instead of "
        f"executing again. 1 to 255 printable ASCII characters."
    )
    if not required:
        description += " Optional: without a key the request is executed unprotected."
    parameter = {
        "name": policy.header,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        "example": "5f0c6a8e-2d1b-4c8e-9a57-3f7e1d2b9c40",
    }
    name = policy.header
    if policy.body_field is not None:
        name += f".or-body.{policy.body_field}"
    if not required:
        name += ".optional"
    ref = _component(doc, "parameters", _NOT_A_NAME.sub("_", name), parameter)
    op["parameters"] = [*op.get("parameters", ()), ref]


def _add_header(doc: dict[str, Any], response: dict[str, Any], name: str) -> None:
    """Declare the header ``name`` on ``response`` unless it names it already."""
    declared = response.setdefault("headers", {})
    if name.lower() not in (h.lower() for h in declared):
        declared[name] = _component(doc, "headers", name, _HEADERS[name])


def _component(doc: dict[str, Any], kind: str, name: str, value: dict[str, Any]) -> dict[str, str]:
    """A ``$ref`` to ``value`` under ``components/kind``, added if missing (Rule 5)."""
    section = doc.setdefault("components", {}).setdefault(kind, {})
    for candidate in (name, "Surefoot" + name):
        existing = section.get(candidate)
        if existing is None:
            section[candidate] = _tree(value)
        elif existing != value:
            continue
        return {"$ref": f"#/components/{kind}/{candidate}"}
    raise ConfigurationError(
        f"surefoot.openapi.enrich: the document's components/{kind} already has "
        f"{name!r} and 'Surefoot{name}' for something else"
    )


def _tree(value: Any) -> Any:
    """A copy of the JSON tree ``value`` that shares no dict or list with it, nor within
    itself (``copy.deepcopy`` keeps an object met twice as one, so that enriching one
    operation would change another)."""
    if isinstance(value, Mapping):
        return {k: _tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tree(v) for v in value]
    return value


def _resolve(doc: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    """``parameter``, or the component its ``$ref`` names ({} if none)."""
    ref = parameter.get("$ref")
    if isinstance(ref, str) and ref.startswith(_PARAMETERS):
        found: dict[str, Any] = doc.get("components", {}).get("parameters", {})
        return found.get(ref.removeprefix(_PARAMETERS), {})  # type: ignore[no-any-return]
    return parameter


def _status_order(entry: tuple[str, Any]) -> tuple[int, str]:
    """Statuses in numeric order, then ranges (``4XX``), then ``default``."""
    status = entry[0]
    if status.isdigit():
        return (0, status.zfill(3))
    return (1 if status != "default" else 2, status)
