"""The gateway's policy file: TOML, validated with pydantic v2, every problem with its line.

Map of the file (``docs/gateway.md`` documents every field)::

    [server]                     host, port, workers, trusted_proxies, max_request_body,
                                 access_log, request_id_header, allow_method_override,
                                 max_header_size, max_headers_size, max_header_count,
                                 header_timeout, body_timeout, keepalive_timeout
    [upstream]                   url | app, timeouts, max_connections, forward_idempotency_key
    [upstream.breaker]           the circuit breaker (resilience4j's fields); optional
    [upstream.concurrency]       in-flight limit and the share reserved for critical requests
    [stores]                     name = "store URL"; "default" unless named otherwise
    [identity]                   credential_headers, address_limits (who is calling)
    [[clients]]                  name, api_key | api_key_env | address, tier, critical
    [idempotency]                store, the default policy of every route, reconciler
    [rate_limit]                 store, headers
    [[rate_limit.policies]]      one RateLimitPolicy each (overrides name clients)
    [[routes]]                   match, critical, timeout, idempotency (table or false)
    [routes.idempotency.lookup]  how to ask the upstream whether lost work happened
    [admin]                      host, port, token | token_env

Rule 1: validation is total before anything is built: ``load_config`` returns a
        ``GatewayConfig`` only if every field of every table is valid; otherwise one
        ``ConfigurationError`` lists every problem as ``file:line: path: expected ...``.
Rule 2: checking a file opens nothing: store URLs are checked by scheme and options only,
        the upstream app is imported only when the gateway is built.
Rule 3: secrets never appear in messages or in ``effective()``: ``clients[].api_key``,
        ``admin.token`` and every value of a lookup's ``headers`` are shown by their kind
        only (``got an integer (hidden)``) and as ``***``; the URLs in ``[stores]`` and
        ``upstream.url`` are shown with their password and secret query parameters
        masked (``surefoot._toml.masked_url`` says which).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from surefoot._routes import RouteTable
from surefoot._config import Problems, read_toml
from surefoot._toml import masked_url, shown, split_url
from surefoot.errors import ConfigurationError
from surefoot.gateway._head import ServerLimits
from surefoot.idempotency._policy import IdempotencyPolicy
from surefoot.identity import hash_credential
from surefoot.ratelimit._policy import RateLimitPolicy
from surefoot.storage._registry import STORES, store_from_url
from surefoot.storage.memory import MemoryStore

__all__ = ["PLACEHOLDER", "GatewayConfig", "Lookup", "config_from_dict", "load_config"]

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDER_KINDS = ("key", "body.", "path.", "query.", "header.")


def _described(expected: str, default: Any = ..., **kwargs: Any) -> Any:
    return Field(default, description=expected, **kwargs)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_LIMITS = ServerLimits()


class Server(_Table):
    host: str = _described("an address to listen on", "127.0.0.1")
    port: int = _described("a port number 0-65535", 8080, ge=0, le=65535)
    workers: int = _described("a whole number of processes from 1 to 64", 1, ge=1, le=64)
    trusted_proxies: list[str] = _described(
        "addresses or networks whose forwarding headers and X-Request-Id are believed", []
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = _described(
        "'x-forwarded-for' or 'forwarded': the header trusted proxies write", "x-forwarded-for"
    )
    max_request_body: int = _described("bytes > 0", 1024 * 1024, gt=0)
    access_log: bool = _described("true or false", True)
    log_level: Literal["debug", "info", "warning", "error"] = _described(
        "'debug', 'info', 'warning' or 'error'", "warning"
    )
    shutdown_timeout: float = _described("seconds >= 0", 30.0, ge=0)
    # The server's bounds: their defaults are ServerLimits' (one source).
    max_header_size: int = _described("bytes > 0", _LIMITS.max_header_size, gt=0)
    max_headers_size: int = _described("bytes > 0", _LIMITS.max_headers_size, gt=0)
    max_header_count: int = _described("a whole number >= 1", _LIMITS.max_header_count, ge=1)
    header_timeout: float = _described("seconds > 0", _LIMITS.header_timeout, gt=0)
    body_timeout: float = _described("seconds > 0", _LIMITS.body_timeout, gt=0)
    keepalive_timeout: float = _described("seconds > 0", _LIMITS.keepalive_timeout, gt=0)

    def limits(self) -> ServerLimits:
        """The bounds the HTTP server enforces, from these fields."""
        return ServerLimits(**{f.name: getattr(self, f.name) for f in fields(ServerLimits)})

    allow_method_override: bool = _described("true or false", False)

    @field_validator("trusted_proxies")
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


class Breaker(_Table):
    failure_rate_threshold: float = _described("a share in (0, 1]", 0.5, gt=0, le=1)
    slow_call_rate_threshold: float = _described("a share in (0, 1]", 1.0, gt=0, le=1)
    slow_call_duration: float = _described("seconds > 0", 10.0, gt=0)
    window: Literal["count", "time"] = _described("'count' or 'time'", "count")
    window_size: int = _described("a whole number >= 1", 100, ge=1)
    minimum_calls: int = _described("a whole number >= 1", 20, ge=1)
    open_wait: float = _described("seconds > 0", 30.0, gt=0)
    half_open_calls: int = _described("a whole number >= 1", 5, ge=1)


class Concurrency(_Table):
    limit: int = _described("a whole number >= 1 of requests in flight", ge=1)
    critical_share: float = _described("a share in [0, 1)", 0.2, ge=0, lt=1)
    retry_after: int = _described("whole seconds >= 1", 1, ge=1)


class Upstream(_Table):
    url: str | None = _described("an absolute http:// or https:// URL", None)
    app: str | None = _described("an ASGI app as 'module:attribute'", None)
    connect_timeout: float = _described("seconds > 0", 5.0, gt=0)
    read_timeout: float = _described("seconds > 0", 30.0, gt=0)
    total_timeout: float = _described("seconds > 0", 60.0, gt=0)
    max_connections: int = _described("a whole number >= 1", 100, ge=1)
    forward_idempotency_key: bool = _described("true or false", True)
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
    credential_headers: list[str] = _described(
        "header names whose value identifies a client, in order of precedence",
        ["authorization", "x-api-key"],
    )
    address_limits: list[str] = _described(
        "limits such as ['1000/minute'] on each client address over all of its "
        "credentials, or [] for none",
        ["1000/minute"],
    )


class Client(_Table):
    name: str = _described("a name of letters, digits, '_', '-' or '.'")
    api_key: str | None = _described(
        "the client's API key (as sent in X-API-Key or after 'Bearer ')", None
    )
    api_key_env: str | None = _described("an environment variable holding the API key", None)
    address: str | None = _described("the client's IP address", None)
    tier: str | None = _described("a tier name used by the rate-limit policies", None)
    critical: bool = _described("true or false", False)


class Lookup(_Table):
    method: Literal["GET", "POST", "HEAD"] = _described("'GET', 'POST' or 'HEAD'", "GET")
    path: str = _described(
        "a path on the upstream, with {key}, {body.FIELD}, {path.NAME}, {query.NAME} "
        "or {header.NAME} placeholders"
    )
    found: list[int] = _described("statuses meaning the work happened", [200])
    not_found: list[int] = _described("statuses meaning it did not", [404])
    status: int | None = _described(
        "the status to store for a found result (default: the lookup's own)", None
    )
    timeout: float = _described("seconds > 0", 5.0, gt=0)
    headers: dict[str, str] = _described("header = value, sent with the lookup", {})
    not_found_after: float | None = _described(
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

    methods: list[str] | None = _described("HTTP methods such as ['POST', 'PATCH']", None)
    required: bool | None = _described("true or false", None)
    rollout: bool | None = _described("true or false", None)
    ttl: float | None = _described("seconds from 60 to 7776000 (90 days)", None)
    scope: Literal["principal", "principal_route"] | None = _described(
        "'principal' or 'principal_route'", None
    )
    ignore_fields: list[str] | None = _described("dotted JSON body fields", None)
    lease: float | None = _described("seconds > 0", None)
    on_lease_expiry: Literal["reexecute", "unknown"] | None = _described(
        "'reexecute' or 'unknown'", None
    )
    on_server_error: Literal["release", "store", "unknown"] | None = _described(
        "'release', 'store' or 'unknown'", None
    )
    release_statuses: list[int] | None = _described("HTTP statuses", None)
    wait: float | None = _described("seconds >= 0", None)
    header: str | None = _described("a header name", None)
    body_field: str | None = _described("a top-level JSON body field", None)
    on_store_error: Literal["fail_closed", "fail_open"] | None = _described(
        "'fail_closed' or 'fail_open'", None
    )
    max_records_per_principal: int | Literal[False] | None = _described(
        "a whole number >= 1, or false for no quota", None
    )
    max_unknown_per_principal: int | Literal[False] | None = _described(
        "a whole number >= 1, or false for no quota", None
    )

    @field_validator("max_records_per_principal", "max_unknown_per_principal", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> Any:
        if value is False or value is None or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"expected a whole number >= 1, or false for no quota, got {value!r}")


class RouteIdempotency(IdempotencyFields):
    enabled: bool = _described("true or false", True)
    lookup: Lookup | None = None


class IdempotencyDefaults(IdempotencyFields):
    store: str = _described("a name from [stores]", "default")
    reconcile_interval: float = _described("seconds > 0 between reconciler passes", 30.0, gt=0)


class Policy(_Table):
    name: str = _described("a name of letters, digits, '-', '_' or '.'")
    limits: list[str] = _described("limits such as ['100/minute', '10/second']")
    algorithm: str = _described("an algorithm name such as 'sliding_window'", "sliding_window")
    routes: list[str] = _described("route templates such as 'POST /charges'", [])
    exempt: list[str] = _described("route templates", [])
    costs: dict[str, int] = _described("route template = cost", {})
    per_route: bool = _described("true or false", False)
    tiers: dict[str, list[str]] = _described("tier name = limits", {})
    overrides: dict[str, list[str]] = _described("client name = limits", {})
    shadow: bool = _described("true or false", False)
    on_store_error: Literal["fail_open", "fail_closed", "local_fallback"] = _described(
        "'fail_open', 'fail_closed' or 'local_fallback'", "fail_open"
    )


class RateLimit(_Table):
    store: str = _described("a name from [stores]", "default")
    headers: bool = _described("true or false", True)
    legacy_headers: bool = _described("true or false", False)
    policies: list[Policy] = []


class Route(_Table):
    match: str = _described("a route template such as 'POST /charges/{id}'")
    critical: bool = _described("true or false", False)
    timeout: float | None = _described("seconds > 0", None, gt=0)
    idempotency: RouteIdempotency | None = _described(
        "a table of idempotency fields, or false to leave the route unprotected", None
    )

    @field_validator("idempotency", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # `idempotency = false` (or true) is short for a table with only `enabled`.
        return {"enabled": value} if isinstance(value, bool) else value


class Admin(_Table):
    enabled: bool = _described("true or false", True)
    host: str = _described("an address to listen on", "127.0.0.1")
    port: int = _described("a port number 0-65535", 8081, ge=0, le=65535)
    token: str | None = _described("the bearer token", None)
    token_env: str | None = _described("an environment variable holding the token", None)


class Root(_Table):
    server: Server = Server()
    upstream: Upstream
    stores: dict[str, str] = _described(
        "name = store URL", {"default": "sqlite:///surefoot-gateway.db"}
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


Root.model_rebuild()

_Loc = tuple[str | int, ...]


class GatewayConfig:
    """A validated policy file, with the objects it describes built (nothing opened).

    Attributes:
        root: the validated tables.
        source: the file's name (for messages and the admin API).
        idempotency_policy: the default policy; ``idempotency_routes`` per route (None:
            unprotected); ``lookups`` route template -> ``Lookup``.
        rate_limit_policies: the built ``RateLimitPolicy`` values.
        principals: principal -> client name; ``tiers`` principal -> tier;
            ``critical_principals``.
        api_keys: the API keys of ``[[clients]]``: when there are any, a credential that
            is not one of them is rate limited as its address.
        admin_token: the admin API's token (None: the admin API is disabled).
    """

    def __init__(self, root: Root, source: str, problems: Problems) -> None:
        self.root = root
        self.source = source
        self.principals: dict[str, str] = {}
        self.tiers: dict[str, str] = {}
        self.critical_principals: set[str] = set()
        self.api_keys: list[str] = []
        self._clients(problems)
        self.idempotency_policy = self._policy(root.idempotency, None, ("idempotency",), problems)
        self.idempotency_routes: dict[str, IdempotencyPolicy | None] = {}
        self.lookups: dict[str, Lookup] = {}
        self.route_options: dict[str, Route] = {}
        for index, route in enumerate(root.routes):
            loc: _Loc = ("routes", index)
            try:
                RouteTable([(route.match, None)])
            except ConfigurationError as exc:
                problems.add((*loc, "match"), str(exc))
                continue
            self.route_options.setdefault(route.match, route)
            if route.idempotency is not None and not route.idempotency.enabled:
                self.idempotency_routes.setdefault(route.match, None)
            elif route.idempotency is not None:
                policy = self._policy(
                    route.idempotency, self.idempotency_policy, (*loc, "idempotency"), problems
                )
                self.idempotency_routes.setdefault(route.match, policy)
                if route.idempotency.lookup is not None:
                    self.lookups[route.match] = route.idempotency.lookup
        policies = self._rate_limits(problems)
        self.rate_limit_policies = policies + self._address_ceiling(policies, problems)
        self._tiers(problems)
        self._stores(problems)
        self.admin_token = self._secret(
            root.admin.token, root.admin.token_env, ("admin",), problems
        )
        if root.admin.enabled and self.admin_token is None and root.admin.token_env is None:
            problems.add(("admin", "token"), "required: set token or token_env, or enabled = false")
        if (root.upstream.url is None) == (root.upstream.app is None):
            problems.add(("upstream",), "expected exactly one of url and app")

    # -- building -----------------------------------------------------------------------------

    def _clients(self, problems: Problems) -> None:
        seen: set[str] = set()
        for index, client in enumerate(self.root.clients):
            loc: _Loc = ("clients", index)
            if not _NAME.fullmatch(client.name):
                problems.add(
                    (*loc, "name"),
                    f"expected letters, digits, '_', '-' or '.', got {client.name!r}",
                )
            if client.name in seen:
                problems.add((*loc, "name"), f"{client.name!r} is used by an earlier client")
            seen.add(client.name)
            principals: list[str] = []
            key = self._secret(client.api_key, client.api_key_env, loc, problems, field="api_key")
            if key is not None and (not key or any(c in key for c in " \t\r\n")):
                # A request's credential is parsed (``Identity``): such a key would never
                # be recognised. Never the key itself in a message (Rule 3).
                problems.add(
                    (*loc, "api_key_env" if client.api_key_env else "api_key"),
                    "expected the key alone, as sent in X-API-Key or after 'Bearer ', "
                    f"got {'an empty value' if not key else 'a value with whitespace'}",
                )
            elif key is not None:
                # ``Identity`` parses `Bearer K` and `X-API-Key: K` to the one credential K.
                principals.append(hash_credential(key.encode()))
                self.api_keys.append(key)
            if client.address is not None:
                principals.append("addr:" + client.address)
            if not principals and key is None and client.api_key_env is None:
                problems.add(
                    loc, "expected api_key, api_key_env or address to recognise the client"
                )
            for principal in principals:
                self.principals[principal] = client.name
                if client.tier is not None:
                    self.tiers[principal] = client.tier
                if client.critical:
                    self.critical_principals.add(principal)

    @staticmethod
    def _secret(
        value: str | None,
        env: str | None,
        loc: _Loc,
        problems: Problems,
        *,
        field: str = "token",
    ) -> str | None:
        if value is not None and env is not None:
            problems.add((*loc, f"{field}_env"), f"expected {field} or {field}_env, not both")
        if env is not None:
            found = os.environ.get(env)
            if not found:
                problems.add((*loc, f"{field}_env"), f"the environment variable {env!r} is not set")
            return found or None
        return value

    @staticmethod
    def _policy(
        fields: IdempotencyFields, base: IdempotencyPolicy | None, loc: _Loc, problems: Problems
    ) -> IdempotencyPolicy:
        options: dict[str, Any] = {}
        if base is None:
            # The gateway's defaults: a legacy upstream may have done the work when it
            # fails, and every caller shares one store, so none may fill it.
            options["on_server_error"] = "unknown"
            options["max_records_per_principal"] = 10_000
            options["max_unknown_per_principal"] = 1_000
        for name in IdempotencyFields.model_fields:
            if name not in _POLICY_FIELDS:
                continue
            value = getattr(fields, name)
            if value is None or name not in fields.model_fields_set:
                continue
            if name in ("methods", "release_statuses"):
                value = frozenset(value)
            elif value is False:  # a quota lifted: the policy's None (TOML has no null)
                value = None
            options[name] = value
        try:
            if base is None:
                return IdempotencyPolicy(**options)
            from dataclasses import replace

            return replace(base, **options)
        except (ConfigurationError, TypeError) as exc:
            field, message = _split(str(exc), IdempotencyFields.model_fields)
            problems.add((*loc, *field), message)
            return base if base is not None else IdempotencyPolicy()

    def _rate_limits(self, problems: Problems) -> tuple[RateLimitPolicy, ...]:
        by_name = {name: principal for principal, name in self.principals.items()}
        built: list[RateLimitPolicy] = []
        names: set[str] = set()
        for index, policy in enumerate(self.root.rate_limit.policies):
            loc: _Loc = ("rate_limit", "policies", index)
            if policy.name in names:
                problems.add((*loc, "name"), f"{policy.name!r} is used by an earlier policy")
            names.add(policy.name)
            overrides: dict[str, list[str]] = {}
            for client, limits in policy.overrides.items():
                principals = [p for p, n in self.principals.items() if n == client]
                if client not in by_name:
                    problems.add(
                        (*loc, "overrides", client),
                        f"unknown client {client!r}: expected a name from [[clients]]",
                    )
                for principal in principals:
                    overrides[principal] = limits
            try:
                built.append(
                    RateLimitPolicy(
                        policy.name,
                        limits=policy.limits,
                        algorithm=policy.algorithm,
                        routes=policy.routes,
                        exempt=policy.exempt,
                        costs=policy.costs,
                        per_route=policy.per_route,
                        tiers=policy.tiers,
                        overrides=overrides,
                        shadow=policy.shadow,
                        on_store_error=policy.on_store_error,
                    )
                )
            except ConfigurationError as exc:
                field, message = _split(str(exc), Policy.model_fields)
                problems.add((*loc, *field), message)
        return tuple(built)

    def _tiers(self, problems: Problems) -> None:
        # A tier no policy defines has no effect at all: the client would silently get the
        # base limits, so a misspelt tier is refused rather than lost.
        defined = sorted(
            {tier for policy in self.root.rate_limit.policies for tier in policy.tiers}
        )
        for index, client in enumerate(self.root.clients):
            if client.tier is None or client.tier in defined:
                continue
            close = difflib.get_close_matches(client.tier, defined, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
            elif defined:
                hint = f"; they define {', '.join(map(repr, defined))}"
            else:
                hint = "; none defines tiers"
            problems.add(
                ("clients", index, "tier"),
                f"no rate-limit policy defines the tier {client.tier!r}{hint}",
            )

    def _address_ceiling(
        self, policies: tuple[RateLimitPolicy, ...], problems: Problems
    ) -> tuple[RateLimitPolicy, ...]:
        """The ``address`` policy of ``[identity] address_limits``, when it applies.

        It backs per-credential limits when the file lists no API keys (the upstream
        verifies them, so any credential gets a bucket); with API keys listed, unknown
        credentials already share their address's buckets and need no ceiling. It covers
        the routes of the policies (every route when one of them lists none), except the
        routes every policy exempts.
        """
        limits = self.root.identity.address_limits
        if not limits or self.api_keys or not policies:
            return ()
        if len(policies) != len(self.root.rate_limit.policies):
            return ()  # a policy is invalid (and reported): nothing to put a ceiling on
        routes: list[str] = []
        if all(policy.routes for policy in policies):
            routes = list(dict.fromkeys(r for policy in policies for r in policy.routes))
        exempt = [r for r in policies[0].exempt if all(r in p.exempt for p in policies)]
        loc: _Loc = ("identity", "address_limits")
        for index, policy in enumerate(policies):
            if policy.name == _ADDRESS_POLICY:
                problems.add(
                    ("rate_limit", "policies", index, "name"),
                    f"{_ADDRESS_POLICY!r} is the [identity] address_limits ceiling's name: "
                    "rename this policy, or set address_limits = []",
                )
        store = self.root.stores.get(self.root.rate_limit.store, "")
        if _scheme(store) == "redis+cluster":
            problems.add(
                loc,
                "expected [] with a Redis Cluster rate-limit store (an address's and a "
                "credential's counters cannot be decided in one step there)",
            )
            return ()
        try:
            # A client listed by its address has its own limits (tier, overrides): the
            # ceiling for unnamed callers is not one of them.
            listed = [p for p in self.principals if p.startswith("addr:")]
            ceiling = RateLimitPolicy(
                _ADDRESS_POLICY,
                limits=limits,
                routes=routes,
                exempt=exempt,
                per="address",
                allow=listed,
            )
        except ConfigurationError as exc:
            problems.add(loc, _split(str(exc), Policy.model_fields)[1])
            return ()
        return (ceiling,)

    def _stores(self, problems: Problems) -> None:
        for name, url in self.root.stores.items():
            try:
                scheme = split_url(url).scheme
            except ConfigurationError as exc:  # the URL masked (Rule 3)
                problems.add(("stores", name), str(exc))
                continue
            if scheme not in STORES:
                problems.add(
                    ("stores", name),
                    f"expected a store URL with a scheme in {sorted(STORES)}, got {scheme!r}",
                )
        for loc, name in (
            (("idempotency", "store"), self.root.idempotency.store),
            (("rate_limit", "store"), self.root.rate_limit.store),
        ):
            if name not in self.root.stores:
                problems.add(
                    loc,
                    f"expected a name from [stores] ({', '.join(self.root.stores)}), got {name!r}",
                )

    # -- reading ------------------------------------------------------------------------------

    def store_url(self, name: str) -> str:
        return self.root.stores[name]

    def store_warnings(self, workers: int | None = None) -> list[str]:
        """What the idempotency store risks when the gateway runs this file with
        ``workers`` processes (default: ``server.workers``): lines that ``check-config``
        prints and ``serve`` logs at WARNING when it starts. The file is valid all the same.

        A ``memory://`` store is one process's, shared by every caller: listed clients
        and, always possible, callers it does not list (each its own principal). When one
        caller may hold as many records as the store keeps (``max_records_per_principal``
        of some route at least ``max_records``, or none), one client can fill it alone.
        """
        name = self.root.idempotency.store
        url = self.store_url(name)
        if _scheme(url) != "memory":
            return []
        try:
            store = store_from_url(url)
        except ConfigurationError:
            return []  # not a store at all: check-config and serve report why
        assert isinstance(store, MemoryStore)
        capacity = store.max_records
        policies = [self.idempotency_policy, *self.idempotency_routes.values()]
        quotas = [p.max_records_per_principal for p in policies if p is not None]
        held = None if None in quotas else max(q for q in quotas if q is not None)
        alone = held is None or held >= capacity
        clients = len(self.root.clients)
        plural = "s" if clients > 1 else ""
        callers = f" ({clients} client{plural} and any unlisted one)" if clients else ""
        line = (
            f"[idempotency] store {name!r} is memory://: its records live in this process "
            f"only and are lost on restart, and every caller{callers} shares its "
            f"{capacity} records"
        )
        if store.on_full == "evict":
            whose = "one caller's" if alone else "callers'"
            line += (
                f", so {whose} new keys can fill it and push out others' completed records "
                "inside their TTL (retries run again)"
            )
        elif alone:
            quota = (
                "any number of them (no max_records_per_principal)"
                if held is None
                else f"{held} records (max_records_per_principal)"
            )
            line += (
                f"; one caller may hold {quota}, so one client can fill the store and lock "
                "every other client out (503 store_capacity_exceeded) until its records "
                f"expire: set max_records_per_principal below {capacity}"
            )
        else:
            line += (
                ", so callers together can fill it, and then every caller's new keys are "
                "refused (503 store_capacity_exceeded) until records expire"
            )
        workers = workers or self.root.server.workers
        if workers > 1:
            line += (
                f"; each of the {workers} workers keeps records of its own, so a retry that "
                "reaches another worker executes again"
            )
        return [line + ". Use sqlite:// on one machine, redis:// or postgresql:// beyond it."]

    @property
    def critical_routes(self) -> list[str]:
        return [route.match for route in self.root.routes if route.critical]

    @property
    def upstream_label(self) -> str:
        """The upstream as messages name it: its URL (masked, Rule 3) or ``app module:attr``."""
        url = self.root.upstream.url
        return masked_url(url) if url is not None else f"app {self.root.upstream.app}"

    def effective(self, running: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The configuration in force as plain data, secrets masked (for the admin API).

        Every default is filled in: ``[idempotency]`` and each route's ``idempotency`` table
        show the policy in force, inherited fields included (a route without the table
        uses ``[idempotency]``). ``running`` replaces fields by what the process runs
        with, e.g. ``{"server": {"port": 8443}}`` after ``surefoot serve --port 8443``.
        """
        data = self.root.model_dump(mode="json")
        for table, values in (running or {}).items():
            data[table].update(values)
        data["admin"]["token"] = "***" if data["admin"]["token"] else None
        for client in data["clients"]:
            if client["api_key"]:
                client["api_key"] = "***"
        data["stores"] = {name: masked_url(url) for name, url in data["stores"].items()}
        if data["upstream"]["url"] is not None:
            data["upstream"]["url"] = masked_url(data["upstream"]["url"])
        data["idempotency"].update(_in_force(self.idempotency_policy))
        for route in data["routes"]:
            table = route.get("idempotency")
            policy = self.idempotency_routes.get(route["match"])
            if table and policy is not None:
                table.update(_in_force(policy))
            lookup = (table or {}).get("lookup")
            if lookup:  # a lookup's headers may carry the upstream's credentials
                lookup["headers"] = dict.fromkeys(lookup["headers"], "***")
        return {"source": self.source, **data}


#: The name of the policy ``[identity] address_limits`` builds (in headers and problems).
_ADDRESS_POLICY = "address"

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def _scheme(url: str) -> str:
    """A store URL's scheme, or "" if it cannot be split (``_stores`` says so)."""
    try:
        return split_url(url).scheme
    except ConfigurationError:
        return ""


def _in_force(policy: IdempotencyPolicy) -> dict[str, Any]:
    """The policy's values of the fields a policy file can set, as JSON data."""
    out: dict[str, Any] = {}
    for name in _POLICY_FIELDS:
        value = getattr(policy, name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


_POLICY_FIELDS = frozenset(IdempotencyPolicy.__dataclass_fields__) & frozenset(
    IdempotencyFields.model_fields
)
_BUILT_FIELD = re.compile(r"^[A-Za-z]+(?: '[^']*')?\.([a-z_]+)(?:\[[^\]]*\])?: (.*)$", re.S)


def _split(message: str, fields: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """A constructor's ``Class.field: expected ...`` as (field path, message)."""
    match = _BUILT_FIELD.match(message)
    if match is not None and match.group(1) in fields:
        return (match.group(1),), match.group(2)
    return (), message


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """The gateway configuration in the TOML file at ``path``.

    Example:
        >>> config = load_config("examples/gateway.toml")

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, or is invalid; the message
            lists every problem as ``file:line: field.path: expected ..., got ...``.
    """
    data, source, lines = read_toml(path)
    return _validated(data, source, lines)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> GatewayConfig:
    """The gateway configuration in ``data`` (a parsed TOML document); same checks."""
    return _validated(data, source, None)


def _validated(data: Mapping[str, Any], source: str, lines: Sequence[str] | None) -> GatewayConfig:
    problems = Problems(source, lines, "the gateway configuration")
    try:
        root = Root.model_validate(dict(data))
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.add(error["loc"], _expected(error))
        problems.raise_if_any()
        raise AssertionError("unreachable") from None  # pragma: no cover
    config = GatewayConfig(root, source, problems)
    problems.raise_if_any()
    return config


def _expected(error: Mapping[str, Any]) -> str:
    """What a pydantic error means for the person editing the file."""
    kind = error["type"]
    loc = tuple(error["loc"])
    model, field = _model_at(loc)
    got = _got(error.get("input"), (model.__name__ if model is not None else "", field))
    if kind == "extra_forbidden" and model is not None:
        allowed = sorted(model.model_fields)
        close = difflib.get_close_matches(str(field), allowed, n=1)
        if close:
            return f"unknown field (did you mean {close[0]!r}?)"
        return f"unknown field; expected one of {', '.join(allowed)}"
    info = model.model_fields.get(str(field)) if model is not None else None
    expected = info.description if info is not None and info.description else None
    if kind == "missing":
        return f"required, missing (expected {expected})" if expected else "required, missing"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {got}"
    if expected is None:
        return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got}"
    return f"expected {expected}, got {got}"


def _got(value: Any, where: tuple[str, str | int | None]) -> str:
    """A value a message quotes, secrets masked (Rule 3)."""
    if where in _URL_FIELDS and isinstance(value, str):
        return shown(masked_url(value))
    return shown(value, secret=where in _SECRET_FIELDS or where in _URL_FIELDS)


#: (model, field) holding secrets, or URLs that may carry one (Rule 3).
_SECRET_FIELDS = frozenset({("Client", "api_key"), ("Admin", "token"), ("Lookup", "headers")})
_URL_FIELDS = frozenset({("Root", "stores"), ("Upstream", "url")})


def _model_at(loc: _Loc) -> tuple[type[BaseModel] | None, str | int | None]:
    """The model owning the last named field of ``loc``, and that field."""
    model: type[BaseModel] | None = Root
    owner: type[BaseModel] | None = Root
    field: str | int | None = None
    for part in loc:
        if model is None:
            break
        if isinstance(part, int) or part not in model.model_fields:
            if isinstance(part, str) and part not in model.model_fields:
                # A union's member name (pydantic puts e.g. 'RouteIdempotency' in loc).
                found = _MODELS.get(part)
                if found is not None:
                    model = found
                    continue
                owner, field = model, part
                model = None
            continue
        owner, field = model, part
        model = _FIELD_MODELS.get((model.__name__, part))
    return owner, field


_MODELS: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (Server, Breaker, Concurrency, Upstream, Identity, Client, Lookup,
                RouteIdempotency, IdempotencyDefaults, Policy, RateLimit, Route, Admin)
}  # fmt: skip
_FIELD_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("Root", "server"): Server,
    ("Root", "upstream"): Upstream,
    ("Root", "identity"): Identity,
    ("Root", "clients"): Client,
    ("Root", "idempotency"): IdempotencyDefaults,
    ("Root", "rate_limit"): RateLimit,
    ("Root", "routes"): Route,
    ("Root", "admin"): Admin,
    ("Upstream", "breaker"): Breaker,
    ("Upstream", "concurrency"): Concurrency,
    ("RateLimit", "policies"): Policy,
    ("Route", "idempotency"): RouteIdempotency,
    ("RouteIdempotency", "lookup"): Lookup,
}
