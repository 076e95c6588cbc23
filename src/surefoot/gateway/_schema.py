"""The schema of the gateway's policy file: plain pydantic models (``surefoot._config``).

One model per table of the file (``gateway/_config.py`` has the map, ``docs/gateway.md`` every
field); ``Root`` is the file. ``gateway/_config.py`` validates a file with ``Root`` and builds
the objects it describes (``GatewayConfig``). Secrets are marked ``mask="secret"`` and URLs
that may hold one ``mask="url"``: a message never quotes them (``surefoot._config`` Rule 2),
as ``gateway/_config.py`` Rule 3 promises.

Shared tables come from the package of the class they configure: ``[upstream.breaker]`` is
``surefoot.client.BreakerTable`` (``CircuitBreaker``'s defaults), with one override; the
defaults of ``[[webhooks.receive]]`` are ``WebhookEndpoint``'s and ``Ordering``'s, and an
unset ``tolerance`` or HMAC field is left to the scheme's class.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, fields
from datetime import UTC, date, datetime
from itertools import pairwise
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from surefoot._config import described
from surefoot._masking import masked_url, shown
from surefoot.client import BreakerTable
from surefoot.gateway._head import ServerLimits
from surefoot.webhooks import Ordering, WebhookEndpoint

__all__ = [
    "ENV_NAME",
    "Abuse",
    "AbuseEntry",
    "AnomalyTable",
    "ChallengeTable",
    "FailureRuleTable",
    "HMAC_FIELDS",
    "NAME",
    "PLACEHOLDER",
    "Admin",
    "Breaker",
    "Brownout",
    "BrownoutSchedule",
    "Client",
    "Concurrency",
    "Deprecation",
    "IdempotencyDefaults",
    "IdempotencyFields",
    "Identity",
    "Lookup",
    "Policy",
    "RateLimit",
    "Rollout",
    "Root",
    "Route",
    "RouteIdempotency",
    "Sagas",
    "Server",
    "Upstream",
    "Versions",
    "WebhookOrdering",
    "WebhookReceive",
    "WebhookSend",
    "Webhooks",
]

#: A client's name: letters, digits, '_', '-' or '.'.
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDER_KINDS = ("key", "body.", "path.", "query.", "header.")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_LIMITS = ServerLimits()


class Server(_Table):
    host: str = described("an address to listen on", "127.0.0.1")
    port: int = described("a port number 0-65535", 8080, ge=0, le=65535)
    workers: int = described("a whole number of processes from 1 to 64", 1, ge=1, le=64)
    trusted_proxies: list[str] = described(
        "addresses or networks whose forwarding headers and X-Request-Id are believed", []
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = described(
        "'x-forwarded-for' or 'forwarded': the header trusted proxies write", "x-forwarded-for"
    )
    max_request_body: int = described("bytes > 0", 1024 * 1024, gt=0)
    access_log: bool = described("true or false", True)
    log_level: Literal["debug", "info", "warning", "error"] = described(
        "'debug', 'info', 'warning' or 'error'", "warning"
    )
    shutdown_timeout: float = described("seconds >= 0", 30.0, ge=0)
    # The server's bounds: their defaults are ServerLimits' (one source).
    max_header_size: int = described("bytes > 0", _LIMITS.max_header_size, gt=0)
    max_headers_size: int = described("bytes > 0", _LIMITS.max_headers_size, gt=0)
    max_header_count: int = described("a whole number >= 1", _LIMITS.max_header_count, ge=1)
    header_timeout: float = described("seconds > 0", _LIMITS.header_timeout, gt=0)
    body_timeout: float = described("seconds > 0", _LIMITS.body_timeout, gt=0)
    keepalive_timeout: float = described("seconds > 0", _LIMITS.keepalive_timeout, gt=0)

    def limits(self) -> ServerLimits:
        """The bounds the HTTP server enforces, from these fields."""
        return ServerLimits(**{f.name: getattr(self, f.name) for f in fields(ServerLimits)})

    allow_method_override: bool = described("true or false", False)
    test_traffic_from: list[str] = described("addresses or networks test requests come from", [])
    test_traffic_header: str | None = described(
        "a header name (lower case) that marks a test request", None
    )

    @field_validator("test_traffic_header")
    @classmethod
    def _test_header(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(
                f"expected a lower-case header name such as 'x-test-run', got {value!r}"
            )
        if not info.data.get("test_traffic_from"):
            raise ValueError(
                "expected test_traffic_from too: the addresses or networks test requests "
                "come from (anyone else could mark their traffic as test traffic)"
            )
        return value

    @field_validator("trusted_proxies", "test_traffic_from")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or networks such as '10.0.0.0/8', got {item!r}"
                ) from None
        return value


class Breaker(BreakerTable):
    """``[upstream.breaker]``: ``CircuitBreaker``'s table, with one default of the gateway's."""

    # The gateway's own default (docs/gateway.md), unchanged: with
    # CircuitBreaker's 60 s, the default [upstream] total_timeout (60 s) would end a call
    # before it could ever count as slow.
    slow_call_duration: Annotated[float, Field(gt=0)] = described(
        "a finite number of seconds > 0", 10.0
    )


class Concurrency(_Table):
    limit: int = described("a whole number >= 1 of requests in flight", ge=1)
    critical_share: float = described("a share in [0, 1)", 0.2, ge=0, lt=1)
    retry_after: int = described("whole seconds >= 1", 1, ge=1)


class Upstream(_Table):
    url: str | None = described("an absolute http:// or https:// URL", None, mask="url")
    app: str | None = described("an ASGI app as 'module:attribute'", None)
    connect_timeout: float = described("seconds > 0", 5.0, gt=0)
    read_timeout: float = described("seconds > 0", 30.0, gt=0)
    total_timeout: float = described("seconds > 0", 60.0, gt=0)
    max_connections: int = described("a whole number >= 1", 100, ge=1)
    forward_idempotency_key: bool = described("true or false", True)
    breaker: Breaker | None = None
    concurrency: Concurrency | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"expected an absolute http:// or https:// URL, got {shown(masked_url(value))}"
            )
        return value

    @field_validator("app")
    @classmethod
    def _app(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f"expected an ASGI app as 'module:attribute', got {value!r}")
        return value


class Identity(_Table):
    credential_headers: list[str] = described(
        "header names whose value identifies a client, in order of precedence",
        ["authorization", "x-api-key"],
    )
    address_limits: list[str] = described(
        "limits such as ['1000/minute'] on each client address over all of its "
        "credentials, or [] for none",
        ["1000/minute"],
    )


class Client(_Table):
    name: str = described("a name of letters, digits, '_', '-' or '.'")
    api_key: str | None = described(
        "the client's API key (as sent in X-API-Key or after 'Bearer ')", None, mask="secret"
    )
    api_key_env: str | None = described("an environment variable holding the API key", None)
    address: str | None = described("the client's IP address", None)
    tier: str | None = described("a tier name used by the rate-limit policies", None)
    critical: bool = described("true or false", False)
    version: str | None = described("an API version from [versions] dates", None)


class Lookup(_Table):
    method: Literal["GET", "POST", "HEAD"] = described("'GET', 'POST' or 'HEAD'", "GET")
    path: str = described(
        "a path on the upstream, with {key}, {body.FIELD}, {path.NAME}, {query.NAME} "
        "or {header.NAME} placeholders"
    )
    found: list[int] = described("statuses meaning the work happened", [200])
    not_found: list[int] = described("statuses meaning it did not", [404])
    status: int | None = described(
        "the status to store for a found result (default: the lookup's own)", None
    )
    timeout: float = described("seconds > 0", 5.0, gt=0)
    headers: dict[str, str] = described("header = value, sent with the lookup", {}, mask="secret")
    not_found_after: float | None = described(
        "seconds a key must be unknown before not-found releases it", None, ge=0
    )

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected a path that starts with '/', got {value!r}")
        for name in PLACEHOLDER.findall(value):
            if name != "key" and not name.startswith(_PLACEHOLDER_KINDS[1:]):
                raise ValueError(
                    f"unknown placeholder {{{name}}}: expected {{key}}, {{body.FIELD}}, "
                    "{path.NAME}, {query.NAME} or {header.NAME}"
                )
        return value


class IdempotencyFields(_Table):
    """The fields of ``IdempotencyPolicy`` (all optional: unset ones are inherited)."""

    methods: list[str] | None = described("HTTP methods such as ['POST', 'PATCH']", None)
    required: bool | None = described("true or false", None)
    rollout: bool | None = described("true or false", None)
    ttl: float | None = described("seconds from 60 to 7776000 (90 days)", None)
    scope: Literal["principal", "principal_route"] | None = described(
        "'principal' or 'principal_route'", None
    )
    ignore_fields: list[str] | None = described("dotted JSON body fields", None)
    lease: float | None = described("seconds > 0", None)
    on_lease_expiry: Literal["reexecute", "unknown"] | None = described(
        "'reexecute' or 'unknown'", None
    )
    on_server_error: Literal["release", "store", "unknown"] | None = described(
        "'release', 'store' or 'unknown'", None
    )
    release_statuses: list[int] | None = described("HTTP statuses", None)
    wait: float | None = described("seconds >= 0", None)
    header: str | None = described("a header name", None)
    body_field: str | None = described("a top-level JSON body field", None)
    on_store_error: Literal["fail_closed", "fail_open"] | None = described(
        "'fail_closed' or 'fail_open'", None
    )
    max_records_per_principal: int | Literal[False] | None = described(
        "a whole number >= 1, or false for no quota", None
    )
    max_unknown_per_principal: int | Literal[False] | None = described(
        "a whole number >= 1, or false for no quota", None
    )

    @field_validator("max_records_per_principal", "max_unknown_per_principal", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> Any:
        if value is False or value is None or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"expected a whole number >= 1, or false for no quota, got {value!r}")


class RouteIdempotency(IdempotencyFields):
    enabled: bool = described("true or false", True)
    lookup: Lookup | None = None


class IdempotencyDefaults(IdempotencyFields):
    store: str = described("a name from [stores]", "default")
    reconcile_interval: float = described("seconds > 0 between reconciler passes", 30.0, gt=0)


class Rollout(_Table):
    """``[rate_limit.policies.rollout]``: the policy is enforced for these clients and
    shadows everyone else's requests (``surefoot.ratelimit.Rollout``)."""

    percent: float = described("a share of clients from 0 to 100", 0.0, ge=0, le=100)
    clients: list[str] = described("[[clients]] names", [], max_length=10000)


class Policy(_Table):
    name: str = described("a name of letters, digits, '-', '_' or '.'")
    limits: list[str] = described("limits such as ['100/minute', '10/second']")
    algorithm: str = described("an algorithm name such as 'sliding_window'", "sliding_window")
    routes: list[str] = described("route templates such as 'POST /charges'", [])
    exempt: list[str] = described("route templates", [])
    costs: dict[str, int] = described("route template = cost", {})
    per_route: bool = described("true or false", False)
    tiers: dict[str, list[str]] = described("tier name = limits", {})
    overrides: dict[str, list[str]] = described("client name = limits", {})
    shadow: bool = described("true or false", False)
    rollout: Rollout | None = None
    on_store_error: Literal["fail_open", "fail_closed", "local_fallback"] = described(
        "'fail_open', 'fail_closed' or 'local_fallback'", "fail_open"
    )


class RateLimit(_Table):
    store: str = described("a name from [stores]", "default")
    headers: bool = described("true or false", True)
    legacy_headers: bool = described("true or false", False)
    max_override: float = described(
        "seconds from 60 to 31536000: the longest temporary override the admin API or CLI may set",
        2592000.0,
        ge=60,
        le=31536000,
    )
    policies: list[Policy] = []


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _moment(value: Any) -> Any:
    """A TOML date (midnight UTC) or a date and time with its offset; other values are left
    to the field's type, which refuses them."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(
            "expected a date, or a date and time with its offset, e.g. 2027-01-01T00:00:00Z"
        )
    return value


def _https(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s<>\"]{1,2000}", value):
        raise ValueError(f"expected an absolute http:// or https:// URL, got {shown(value)}")
    return value


class Brownout(_Table):
    """``[[routes.deprecation.brownouts]]``: one window of the post-sunset answer."""

    start: datetime = described("a date and time with its offset (TOML)")
    duration: float = described("seconds from 1 to 86400", 600.0, ge=1, le=86400)

    _start = field_validator("start", mode="before")(_moment)


class BrownoutSchedule(_Table):
    """``[routes.deprecation.brownout_schedule]``: windows on given days each week, each
    longer than the last, from ``duration`` on ``starts`` to ``final_duration`` at the sunset."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = described(
        "days such as ['tue', 'thu']", min_length=1, max_length=7
    )
    at: str = described("a time of day 'HH:MM' in UTC", "14:00")
    duration: float = described("seconds from 60 to 86400", 600.0, ge=60, le=86400)
    final_duration: float | None = described(
        "seconds from duration to 86400: the last window's length", None, le=86400
    )
    starts: datetime | None = described(
        "a date, or a date and time with its offset (default: the deprecation date)", None
    )

    _starts = field_validator("starts", mode="before")(_moment)

    @field_validator("at")
    @classmethod
    def _at(cls, value: str) -> str:
        if not _TIME_OF_DAY.fullmatch(value):
            raise ValueError(f"expected a time of day 'HH:MM' (UTC), got {shown(value)}")
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        if len(set(value)) < len(value):
            raise ValueError("expected each day once")
        return value

    @field_validator("final_duration")
    @classmethod
    def _final(cls, value: float | None, info: ValidationInfo) -> float | None:
        first = info.data.get("duration")
        if value is not None and first is not None and value < first:
            raise ValueError(f"expected at least duration ({first:g})")
        return value


class Deprecation(_Table):
    """``[routes.deprecation]``: RFC 9745 ``Deprecation``, RFC 8594 ``Sunset``, brownouts."""

    deprecated: datetime = described(
        "a date, or a date and time with its offset: when the route is (or was) deprecated"
    )
    sunset: datetime | None = described(
        "a date, or a date and time with its offset, after deprecated: when it stops answering",
        None,
    )
    link: str | None = described("an http(s) URL of the migration notes", None)
    sunset_link: str | None = described("an http(s) URL about the sunset (default: link)", None)
    replacement: str | None = described(
        "text of at most 200 characters naming what replaces the route, e.g. 'GET /v2/orders'",
        None,
        max_length=200,
    )
    clients: list[str] | None = described(
        "[[clients]] names the deprecation applies to (default: every client)",
        None,
        min_length=1,
        max_length=10000,
    )
    extensions: dict[str, datetime] = described("client name = a later sunset for that client", {})
    brownouts: list[Brownout] = described("tables of brownout windows", [], max_length=1000)
    brownout_schedule: BrownoutSchedule | None = None
    brownout_critical: bool = described(
        "true or false: brownouts apply to clients marked critical too", False
    )

    _dates = field_validator("deprecated", "sunset", mode="before")(_moment)
    _links = field_validator("link", "sunset_link")(_https)

    @field_validator("extensions", mode="before")
    @classmethod
    def _extensions(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: _moment(when) for name, when in value.items()}
        return value

    @field_validator("sunset")
    @classmethod
    def _sunset(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        deprecated = info.data.get("deprecated")
        if value is not None and deprecated is not None and value <= deprecated:
            raise ValueError(
                f"expected a moment after deprecated ({deprecated.isoformat()}), "
                f"got {value.isoformat()}"
            )
        return value


class Versions(_Table):
    """``[versions]``: date-based API versions, pinned per client (``surefoot.contracts``)."""

    dates: list[str] = described(
        "versions 'YYYY-MM-DD' in increasing order", min_length=1, max_length=1000
    )
    header: str = described("a header name clients send to choose a version", "surefoot-version")
    forward_header: str = described(
        "a header name carrying the effective version to the upstream", "surefoot-version"
    )
    pin: Literal["first_used", "latest"] = described(
        "'first_used' (a new client is pinned to the version of its first request) "
        "or 'latest' (clients without a version in [[clients]] follow the latest)",
        "first_used",
    )
    initial: str | None = described(
        "a version from dates a new client is pinned to (default: the latest)", None
    )
    store: str = described("a name from [stores]", "default")

    @field_validator("dates")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        for index, version in enumerate(value):
            try:
                if not _VERSION.fullmatch(version):
                    raise ValueError
                date.fromisoformat(version)
            except ValueError:
                raise ValueError(
                    f"expected dates 'YYYY-MM-DD', got {shown(version)} at index {index}"
                ) from None
        for index, (a, b) in enumerate(pairwise(value)):
            if b <= a:
                raise ValueError(
                    f"expected dates in increasing order, each once: {b!r} at index "
                    f"{index + 1} comes after {a!r}"
                )
        return value

    @field_validator("header", "forward_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value.lower()):
            raise ValueError(f"expected a header name, got {shown(value)}")
        return value.lower()

    @field_validator("initial")
    @classmethod
    def _initial(cls, value: str | None, info: ValidationInfo) -> str | None:
        dates = info.data.get("dates")
        if value is not None and dates is not None and value not in dates:
            raise ValueError(f"expected one of dates {dates}, got {shown(value)}")
        return value


class Route(_Table):
    match: str = described("a route template such as 'POST /charges/{id}'")
    critical: bool = described("true or false", False)
    timeout: float | None = described("seconds > 0", None, gt=0)
    deprecation: Deprecation | None = None
    idempotency: RouteIdempotency | None = described(
        "a table of idempotency fields, or false to leave the route unprotected", None
    )

    @field_validator("idempotency", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # `idempotency = false` (or true) is short for a table with only `enabled`.
        return {"enabled": value} if isinstance(value, bool) else value


class Admin(_Table):
    enabled: bool = described("true or false", True)
    host: str = described("an address to listen on", "127.0.0.1")
    port: int = described("a port number 0-65535", 8081, ge=0, le=65535)
    token: str | None = described("the bearer token", None, mask="secret")
    token_env: str | None = described("an environment variable holding the token", None)


def _default(cls: Any, name: str) -> Any:
    """The default of the dataclass field ``name`` of ``cls`` (one source for both)."""
    default = next(f.default for f in fields(cls) if f.name == name)
    assert default is not MISSING
    return default


#: The fields of ``[[webhooks.receive]]`` that configure a generic ``Hmac`` scheme only.
HMAC_FIELDS = (
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "content",
    "timestamp_header",
    "id_header",
)
#: An environment variable's name (what ``secrets_env`` lists).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: What a pasted secret starts with (Standard Webhooks, Svix and Stripe secrets and keys).
_SECRET_PREFIXES = ("whsec_", "whpk_", "whsk_")


class WebhookOrdering(_Table):
    object_field: str = described(
        "a dotted JSON body field naming the object, such as 'data.object.id'"
    )
    version_field: str = described(
        "a dotted JSON body field holding the object's version (a number or an RFC 3339 "
        "timestamp), such as 'data.object.updated'"
    )
    lease: float = described("seconds above 0 and at most 3600", _default(Ordering, "lease"))


class WebhookReceive(_Table):
    path: str = described("an exact path in canonical form, such as '/webhooks/stripe'")
    name: str = described("a name of a-z, 0-9, '_', '.' or '-' (at most 64)")
    scheme: Literal["standard_webhooks", "stripe", "github", "hmac"] = described(
        "'standard_webhooks', 'stripe', 'github' or 'hmac'"
    )
    # Names only: a secret is read from the environment, never from the file. Masked all
    # the same, in case a secret was pasted here by mistake.
    secrets_env: list[str] = described(
        "1 to 16 names of environment variables holding the secrets, such as "
        "['STRIPE_WEBHOOK_SECRET']",
        mask="secret",
        min_length=1,
        max_length=16,
    )
    tolerance: float | None = described(
        "seconds > 0 of clock difference accepted both ways (default: the scheme's, 300)",
        None,
        gt=0,
    )
    event_id_header: str | None = described(
        "a header carrying the event id (default: where the scheme keeps it)", None
    )
    event_id_field: str | None = described(
        "a dotted JSON body field holding the event id (default: where the scheme keeps it)",
        None,
    )
    retention: float = described(
        "seconds from 60 to 7776000 (90 days)", _default(WebhookEndpoint, "retention")
    )
    lease: float = described(
        "seconds above 0 and below the retention", _default(WebhookEndpoint, "lease")
    )
    ordering: WebhookOrdering | None = None
    max_body: int = described("bytes from 1 to 16777216", _default(WebhookEndpoint, "max_body"))
    archive: bool = described("true or false", _default(WebhookEndpoint, "archive"))
    store: str = described("a name from [stores]", "default")
    # The generic HMAC scheme's fields (scheme = "hmac" only; unset: Hmac's defaults).
    header: str | None = described("the header carrying the signature", None)
    algorithm: Literal["sha1", "sha256", "sha512"] | None = described(
        "'sha1', 'sha256' or 'sha512'", None
    )
    encoding: Literal["hex", "base64"] | None = described("'hex' or 'base64'", None)
    prefix: str | None = described("text before each signature, such as 'sha256='", None)
    content: str | None = described(
        "the signed content: a template over {body}, {timestamp} and {id}", None
    )
    timestamp_header: str | None = described("the header carrying the signed timestamp", None)
    id_header: str | None = described("the header carrying the event id", None)

    @field_validator("secrets_env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if name.lower().startswith(_SECRET_PREFIXES):
                raise ValueError(
                    "expected names of environment variables, got what looks like a secret "
                    "(hidden): put the secret in the environment and its variable's name here"
                )
            if not ENV_NAME.fullmatch(name):
                # Not quoted: what is not a variable's name may well be a pasted secret.
                raise ValueError(
                    "expected names of environment variables (letters, digits and '_', not "
                    f"starting with a digit), got {shown(name, secret=True)}"
                )
        return value


def _outbox_default(name: str) -> Any:
    """The default of ``Outbox``'s or ``OutboxWorker``'s keyword ``name`` (one source)."""
    import inspect

    from surefoot.outbox import Outbox, OutboxWorker

    for cls in (Outbox, OutboxWorker):
        parameter = inspect.signature(cls.__init__).parameters.get(name)
        if parameter is not None:
            return parameter.default
    raise AssertionError(name)  # pragma: no cover - a schema field without its default


class WebhookSend(_Table):
    """``[webhooks.send]``: the outbox ``surefoot serve`` delivers (``surefoot.outbox``)."""

    database: str = described(
        "a sqlite:///path or postgresql:// URL of the application's database "
        "(${NAME} takes a part from the environment)",
        mask="url",
    )
    prefix: str = described(
        "a lower-case SQL name of letters, digits and '_' (the tables' prefix)",
        _outbox_default("prefix"),
    )
    event_types: list[str] | None = described(
        "event types such as ['invoice.paid', 'customer.*']", None, min_length=1
    )
    schedule: list[float] | None = described(
        "delays in seconds that never decrease, such as [0, 5, 300]", None
    )
    disable_after: float = described(
        "seconds between 60 and 7776000 (90 days)", _outbox_default("disable_after")
    )
    retention: float = described(
        "seconds longer than the schedule's span, at most 315360000 (10 years)",
        _outbox_default("retention"),
    )
    timeout: float = described(
        "seconds between 0.1 and 300", _outbox_default("timeout"), ge=0.1, le=300
    )
    workers: int = described(
        "a whole number of delivery tasks from 0 to 64 (0: only the admin API)", 1, ge=0, le=64
    )
    max_in_flight: int = described(
        "a whole number of requests from 1 to 10000",
        _outbox_default("max_in_flight"),
        ge=1,
        le=10000,
    )
    allow_private: bool = described("true or false", False)
    allow_networks: list[str] = described(
        "networks endpoints may resolve to besides public addresses, such as ['10.0.0.0/8']",
        [],
    )

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        return _database_url(value, "the outbox")

    @field_validator("allow_networks")
    @classmethod
    def _allowed(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected networks such as '10.0.0.0/8', got {shown(item)}"
                ) from None
        return value


class Webhooks(_Table):
    receive: list[WebhookReceive] = []
    send: WebhookSend | None = None


class Sagas(_Table):
    """``[sagas]``: the saga log ``surefoot serve`` watches (``surefoot.saga``): its admin
    endpoints and the sweeper that reports sagas needing a person."""

    database: str = described(
        "a sqlite:///path or postgresql:// URL of the application's database "
        "(${NAME} takes a part from the environment)",
        mask="url",
    )
    prefix: str = described(
        "a lower-case SQL name of letters, digits and '_' (the tables' prefix)", "surefoot_saga"
    )
    stuck_after: float = described(
        "seconds from 1 to 31536000 a running saga may stay unchanged", 900.0, ge=1, le=31536000
    )
    reconcile_interval: float = described(
        "seconds from 1 to 86400 between sweeps", 30.0, ge=1, le=86400
    )

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        return _database_url(value, "the saga log")


class Top(_Table):
    """``[top]``: who is refused most, and who uses their quota most, per policy
    (``/admin/top``, the dashboard and the ``surefoot_top_requests`` series)."""

    enabled: bool = described("true or false", True)
    k: int = described(
        "a whole number of counters per list from 10 to 2000 (the memory is fixed by it)",
        100,
        ge=10,
        le=2000,
    )
    exported: int = described(
        "a whole number from 0 to 100 of clients per list in the Prometheus series",
        10,
        ge=0,
        le=100,
    )
    flush_every: float = described(
        "seconds from 1 to 60 between two writes of a worker's counts to the store",
        5.0,
        ge=1,
        le=60,
    )
    store: str = described("a name from [stores]", "default")


class Alerts(_Table):
    """``[alerts]``: the thresholds of the rules ``surefoot alerts --prometheus`` writes, and
    the gateway's own evaluation of the same rules (``evaluate``) with its notifications."""

    window: float = described(
        "seconds from 60 to 3600: the window of a rate", 300.0, ge=60, le=3600
    )
    baseline: float = described(
        "seconds from 3600 to 2419200: the window of a rate's usual level",
        86400.0,
        ge=3600,
        le=2419200,
    )
    spike_factor: float = described(
        "a number from 1.5 to 1000: how many times its usual rate makes a spike",
        4.0,
        ge=1.5,
        le=1000,
    )
    min_rate: float = described("events per second >= 0 below which no spike fires", 0.1, ge=0)
    hold: float = described(
        "seconds from 0 to 86400 a spike or a backlog lasts before it fires",
        600.0,
        ge=0,
        le=86400,
    )
    unknown_for: float = described(
        "seconds from 0 to 86400 keys may stay of unknown outcome", 600.0, ge=0, le=86400
    )
    breaker_open_for: float = described(
        "seconds from 0 to 86400 a breaker may stay open", 300.0, ge=0, le=86400
    )
    store_failing_for: float = described(
        "seconds from 0 to 86400 a store may fail", 120.0, ge=0, le=86400
    )
    shed_ratio: float = described("a fraction from 0 to 1 of requests shed", 0.05, ge=0, le=1)
    saga_attention_for: float = described(
        "seconds from 0 to 86400 a saga may wait for a person", 300.0, ge=0, le=86400
    )
    webhook_backlog_age: float = described(
        "seconds > 0 a webhook may wait undelivered", 1800.0, gt=0
    )
    runbook_base: str = described(
        "the URL of docs/observability.md as your team reads it",
        "https://surefoot.dev/docs/observability.md",
    )
    evaluate: bool = described("true or false: evaluate the rules in the gateway", True)
    evaluate_every: float = described(
        "seconds from 1 to 300 between two evaluations", 15.0, ge=1, le=300
    )
    webhook_url: str | None = described(
        "an http(s) URL taking Slack-compatible JSON", None, mask="secret"
    )
    webhook_url_env: str | None = described("an environment variable holding the webhook URL", None)
    group_by: list[str] = described(
        "label names (alertname, severity, policy...)", ["alertname"], max_length=16
    )
    group_wait: float = described(
        "seconds from 0 to 3600 before a new group's first notification", 30.0, ge=0, le=3600
    )
    group_interval: float = described(
        "seconds from 1 to 86400 between two notifications of a changed group",
        300.0,
        ge=1,
        le=86400,
    )
    repeat_interval: float = described(
        "seconds from 60 to 604800 before an unchanged group is notified again",
        14400.0,
        ge=60,
        le=604800,
    )
    send_resolved: bool = described("true or false", True)
    store: str = described("a name from [stores] (silences and notifications)", "default")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _LABEL.fullmatch(name):
                raise ValueError(f"expected label names, got {shown(name)}")
        if len(set(value)) < len(value):
            raise ValueError("expected each label name once")
        return value

    @field_validator("repeat_interval")
    @classmethod
    def _repeat_interval(cls, value: float, info: ValidationInfo) -> float:
        group_interval = info.data.get("group_interval")
        if group_interval is not None and value < group_interval:
            raise ValueError(f"expected at least group_interval ({group_interval:g})")
        return value


class AbuseEntry(_Table):
    """``[[abuse.ban]]`` and ``[[abuse.allow]]``: one subject, named by exactly one field."""

    address: str | None = described("an IP address", None)
    network: str | None = described("a network such as '198.51.100.0/24'", None)
    principal: str | None = described(
        "a [[clients]] name, or a principal ('cred:...', 'user:...', 'addr:...')", None
    )
    account: str | None = described("an account name as a login form sends it", None)
    expires: datetime | None = described("a date and time with its offset (TOML)", None)
    reason: str = described("text of at most 200 characters", "", max_length=200)

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expected a date and time with its offset, e.g. 2027-01-01T00:00:00Z")
        return value


class FailureRuleTable(_Table):
    """``[[abuse.failures]]``: count the upstream's failures on routes, ban past a threshold."""

    name: str = described("a name of letters, digits, '_', '-' or '.'")
    routes: list[str] = described("route templates such as 'POST /login'", min_length=1)
    by: Literal["address", "network", "account", "principal"] = described(
        "'address', 'network', 'account' or 'principal'"
    )
    statuses: list[int | str] = described(
        "HTTP status codes from 100 to 599, or classes such as '4xx'",
        [401, 403],
        min_length=1,
        max_length=50,
    )
    threshold: int = described("a whole number of failures from 1 to 1000", 5, ge=1, le=1000)
    window: float = described("seconds from 1 to 86400", 600.0, ge=1, le=86400)
    ban: float = described("seconds from 1 to 31536000", 600.0, ge=1, le=31536000)
    ban_factor: float = described("a number from 1 to 100", 2.0, ge=1, le=100)
    ban_max: float = described("seconds from 1 to 31536000", 604800.0, ge=1, le=31536000)
    forget_after: float = described("seconds from window to 31536000", 86400.0, ge=1, le=31536000)
    challenge_after: int | None = described(
        "a whole number of failures >= 1, below threshold", None, ge=1
    )
    account: str | None = described(
        "where the account tried is: 'json:FIELD', 'form:FIELD', 'header:NAME', "
        "'query:NAME' or 'basic'",
        None,
    )
    ipv4_prefix: int = described("a prefix length from 8 to 32", 24, ge=8, le=32)
    ipv6_prefix: int = described("a prefix length from 16 to 128", 64, ge=16, le=128)

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: list[int | str]) -> list[int | str]:
        for status in value:
            if isinstance(status, str):
                if not re.fullmatch(r"[1-5]xx", status):
                    raise ValueError(f"expected a status class such as '4xx', got {shown(status)}")
            elif not 100 <= status <= 599:
                raise ValueError(f"expected HTTP status codes from 100 to 599, got {status}")
        return value

    def status_codes(self) -> frozenset[int]:
        """``statuses`` with each class spelled out."""
        codes: set[int] = set()
        for status in self.statuses:
            if isinstance(status, str):
                first = int(status[0]) * 100
                codes.update(range(first, first + 100))
            else:
                codes.add(status)
        return frozenset(codes)

    @field_validator("challenge_after")
    @classmethod
    def _challenge_after(cls, value: int | None, info: ValidationInfo) -> int | None:
        threshold = info.data.get("threshold")
        if value is not None and threshold is not None and value >= threshold:
            raise ValueError(f"expected fewer failures than threshold ({threshold})")
        return value

    @field_validator("forget_after")
    @classmethod
    def _forget_after(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("window")
        if window is not None and value < window:
            # Failures from before a forgotten ban would count again (abuse._failures Rule 5).
            raise ValueError(f"expected at least window ({window:g})")
        return value

    @field_validator("ban_max")
    @classmethod
    def _ban_max(cls, value: float, info: ValidationInfo) -> float:
        ban = info.data.get("ban")
        if ban is not None and value < ban:
            raise ValueError(f"expected at least ban ({ban:g})")
        return value


class AnomalyTable(_Table):
    """``[abuse.anomaly]``: per client, its request rate against its usual rate."""

    enabled: bool = described("true or false", True)
    factor: float = described("a number from 1.5 to 1000", 5.0, ge=1.5, le=1000)
    sustain: float = described("seconds from 0 to 3600", 10.0, ge=0, le=3600)
    window: float = described("seconds from 10 to 3600, a multiple of step", 60.0, ge=10, le=3600)
    step: float = described("seconds from 1 to 60", 10.0, ge=1, le=60)
    half_life: float = described("seconds from 60 to 604800", 3600.0, ge=60, le=604800)
    min_rate: float = described("requests per second >= 0", 1.0, ge=0)
    warmup: float = described("seconds from 0 to 604800", 600.0, ge=0, le=604800)
    seasonal: bool = described("true or false", True)
    adapt_after: float = described("seconds from 60 to 604800", 3600.0, ge=60, le=604800)
    max_clients: int = described("a whole number from 1 to 100000", 10000, ge=1, le=100_000)
    action: Literal["report", "tighten", "challenge"] = described(
        "'report', 'tighten' or 'challenge'", "report"
    )
    tighten_to: float = described("a number from 0.1 to 100", 2.0, ge=0.1, le=100)
    tighten_for: float = described("seconds from 10 to 86400", 600.0, ge=10, le=86400)

    @field_validator("step")
    @classmethod
    def _step(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("window")
        if window is not None and (window / value) != int(window / value):
            raise ValueError(f"expected a divisor of window ({window:g})")
        if window is not None and window / value > 60:
            # A client's memory holds window / step counts (and evaluate visits them).
            raise ValueError(f"expected at least window / 60 ({window / 60:g})")
        return value


class ChallengeTable(_Table):
    """``[abuse.challenge]``: what suspicious but not banned traffic gets."""

    action: Literal["refuse", "header"] = described("'refuse' or 'header'", "refuse")
    url: str | None = described("an http(s) URL of your challenge page", None)
    header: str = described("a lower-case header name", "surefoot-suspicion")
    retry_after: int = described("seconds from 1 to 3600", 30, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"expected a lower-case header name, got {shown(value)}")
        return value


class Abuse(_Table):
    """``[abuse]``: bans and allows, failure rules, anomaly detection and the abuse log."""

    enabled: bool = described("true or false", True)
    store: str = described("a name from [stores] (entries and failure counts)", "default")
    sync_every: float = described("seconds from 0.1 to 60", 1.0, ge=0.1, le=60)
    log: str | None = described("a file path for the JSON-lines abuse log", None)
    addresses: Literal["full", "truncate", "hash"] = described(
        "'full', 'truncate' or 'hash': how addresses appear in the log and events", "full"
    )
    hash_key_env: str | None = described(
        "an environment variable holding the key that hashes accounts and addresses", None
    )
    require_expiry: bool = described("true or false: every ban must expire", False)
    max_ban: float = described(
        "seconds from 60 to 315360000: the longest ban the admin API or CLI may set",
        31536000.0,
        ge=60,
        le=315360000,
    )
    ban: list[AbuseEntry] = described("tables of bans", [], max_length=10000)
    allow: list[AbuseEntry] = described("tables of allows", [], max_length=10000)
    failures: list[FailureRuleTable] = described("tables of failure rules", [], max_length=32)
    anomaly: AnomalyTable | None = None
    challenge: ChallengeTable | None = None


class Root(_Table):
    server: Server = Server()
    upstream: Upstream
    stores: dict[str, str] = described(
        "name = store URL", {"default": "sqlite:///surefoot-gateway.db"}, mask="url"
    )

    @field_validator("stores")
    @classmethod
    def _expand(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _expand_env(url) for name, url in value.items()}

    identity: Identity = Identity()
    clients: list[Client] = []
    idempotency: IdempotencyDefaults = IdempotencyDefaults()
    rate_limit: RateLimit = RateLimit()
    routes: list[Route] = []
    admin: Admin = Admin()
    webhooks: Webhooks = Webhooks()
    sagas: Sagas | None = None
    top: Top = Top()
    alerts: Alerts = Alerts()
    abuse: Abuse = Abuse()
    versions: Versions | None = None


Root.model_rebuild()


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _database_url(value: str, whose: str) -> str:
    """A ``database`` field (``[webhooks.send]``, ``[sagas]``): ``${NAME}`` expanded, a
    SQLite or PostgreSQL URL, a SQLite one without options (``whose`` takes none)."""
    value = _expand_env(value)
    scheme = value.partition("://")[0]
    if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in value:
        raise ValueError(
            f"expected a sqlite:///path or postgresql:// URL, got {shown(masked_url(value))}"
        )
    if scheme == "sqlite" and ("?" in value or "#" in value):
        raise ValueError(
            f"expected a sqlite:///path without ?options ({whose} takes none), "
            f"got {shown(masked_url(value))}"
        )
    return value


def _expand_env(text: str) -> str:
    """``text`` with ``${NAME}`` and ``${NAME:-default}`` replaced from the environment."""

    def value(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found:
            return found
        if match.group(2) is not None:
            return match.group(2)
        raise ValueError(
            f"the environment variable {match.group(1)!r} is not set "
            f"(write ${{{match.group(1)}:-default}} to give a default)"
        )

    return _ENV.sub(value, text)
