"""The gateway's policy file: TOML, validated with pydantic v2, every problem with its line.

Its tables are the models of ``_schema.py`` (validated by ``surefoot._config``, the toolkit of
every configuration file); this module builds what they describe (``GatewayConfig``) and
checks what spans tables. Map of the file (``docs/gateway.md`` documents every field)::

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
    [[webhooks.receive]]         path, name, scheme, secrets_env, tolerance, event id,
                                 retention, lease, max_body, archive, store; for "hmac"
                                 its fields
    [webhooks.receive.ordering]  object_field, version_field, lease (the ordering guard)
    [webhooks.send]              database, prefix, event_types, schedule, disable_after, retention,
                                 timeout, workers, max_in_flight, allow_private,
                                 allow_networks (the outbox serve delivers: ``Sender``)
    [sagas]                      database, prefix, stuck_after, reconcile_interval (the saga
                                 log serve watches: admin endpoints and the sweeper)
    [abuse]                      enabled, store, sync_every, log, addresses, require_expiry,
                                 max_ban (abuse protection: ``surefoot.abuse``)
    [[abuse.ban]], [[abuse.allow]]   address | network | principal | account, expires, reason
    [[abuse.failures]]           name, routes, by, statuses, threshold, window, ban growth,
                                 challenge_after, account (fail2ban's jails, per route)
    [abuse.anomaly]              factor, sustain, window, step, half_life... action
    [abuse.challenge]            action (refuse | header), url, header, retry_after

Rule 1: validation is total before anything is built: ``load_config`` returns a
        ``GatewayConfig`` only if every field of every table is valid; otherwise one
        ``ConfigurationError`` lists every problem as ``file:line: path: expected ...``.
Rule 2: checking a file opens nothing: store URLs are checked by scheme and options only,
        the upstream app is imported only when the gateway is built.
Rule 3: secrets never appear in messages or in ``effective()``: ``clients[].api_key``,
        ``admin.token`` and every value of a lookup's ``headers`` are shown by their kind
        only (``got an integer (hidden)``) and as ``***``; the URLs in ``[stores]`` and
        ``upstream.url`` are shown with their password and secret query parameters
        masked (``surefoot._masking.masked_url`` says which). A webhook endpoint's secrets
        are never in the file: ``secrets_env`` names the variables holding them, and a
        problem with one names its variable, never its value. ``webhooks.send.database``
        is masked as a store URL is, in messages, ``effective()`` and ``Sender``'s repr;
        so is ``sagas.database``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from surefoot._config import Loc, Problems, read_toml
from surefoot._masking import masked_text, masked_url, split_url
from surefoot._paths import canonical_path
from surefoot._routes import RouteTable
from surefoot.abuse import (
    AccountSource,
    Action,
    AnomalyResponse,
    AnomalySettings,
    Challenge,
    Entry,
    FailureRule,
    Kind,
    account_hash,
    overlaps,
    subject,
)
from surefoot.contracts import Lifecycle, Schedule, VersionSet, Window
from surefoot.errors import ConfigurationError, InvalidPath
from surefoot.gateway._schema import (
    HMAC_FIELDS,
    NAME,
    AbuseEntry,
    IdempotencyFields,
    Lookup,
    Policy,
    Root,
    Route,
    Sagas,
    WebhookOrdering,
    WebhookReceive,
)
from surefoot.idempotency import IdempotencyPolicy
from surefoot.identity import hash_credential
from surefoot.ratelimit import RateLimitPolicy, Rollout
from surefoot.storage import STORES, MemoryStore, store_from_url
from surefoot.webhooks import (
    EventId,
    GitHub,
    Hmac,
    Ordering,
    Scheme,
    StandardWebhooks,
    Stripe,
    WebhookEndpoint,
)

if TYPE_CHECKING:
    from surefoot.clock import Clock
    from surefoot.outbox import Outbox

__all__ = [
    "AbuseSetup",
    "GatewayConfig",
    "Sender",
    "Webhook",
    "config_from_dict",
    "load_config",
]


class AbuseSetup(NamedTuple):
    """``[abuse]``, checked and built: the policy file's entries, the failure rules, the
    anomaly detector's settings (None: off) and what an anomaly or suspicion leads to."""

    entries: tuple[Entry, ...]
    rules: tuple[FailureRule, ...]
    anomaly: AnomalySettings | None
    response: AnomalyResponse
    challenge: Challenge | None


class Webhook(NamedTuple):
    """One ``[[webhooks.receive]]`` table, built: where it receives, what, and its store."""

    path: str
    endpoint: WebhookEndpoint
    store: str


class Sender(NamedTuple):
    """``[webhooks.send]``, checked: what ``Outbox`` and each ``OutboxWorker`` are built
    with (the gateway builds them; nothing is opened here)."""

    database: str
    prefix: str
    event_types: tuple[str, ...] | None
    schedule: tuple[float, ...] | None
    disable_after: float
    retention: float
    timeout: float
    workers: int
    max_in_flight: int
    allow_private: bool | tuple[str, ...]

    def __repr__(self) -> str:
        return f"Sender({masked_url(self.database)!r}, prefix={self.prefix!r})"

    def outbox(self, clock: Clock | None = None) -> Outbox:
        """A new ``Outbox`` of these settings (it connects on first use)."""
        from surefoot.outbox import Outbox

        return Outbox(
            self.database,
            event_types=self.event_types,
            prefix=self.prefix,
            schedule=self.schedule,
            disable_after=self.disable_after,
            retention=self.retention,
            clock=clock,
        )


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
        alert_webhook: where the gateway's own alerts are sent (``[alerts]``'s
            ``webhook_url`` or ``webhook_url_env``; None: they are only listed).
        webhooks: endpoint name -> ``Webhook``, in the file's order (secrets read from
            the environment).
        sender: ``[webhooks.send]`` checked (None: the gateway sends no webhooks).
        sagas: ``[sagas]`` checked (None: the gateway watches no sagas).
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
            loc: Loc = ("routes", index)
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
        self.webhooks: dict[str, Webhook] = {}
        self._webhooks(problems)
        self.sender = self._sender(problems)
        self.sagas = self._sagas(problems)
        secret = self._secret(None, root.abuse.hash_key_env, ("abuse",), problems, field="hash_key")
        #: The key hashing accounts and addresses (``[abuse] hash_key_env``; b"": none).
        self.abuse_secret = secret.encode() if secret else b""
        self.abuse = self._abuse(problems)
        #: Route template -> its ``Lifecycle`` (``[routes.deprecation]``).
        self.lifecycles: dict[str, Lifecycle] = self._lifecycles(problems)
        #: ``[versions]`` as a ``VersionSet`` (None: the API has no versions), and
        #: client name -> its version from ``[[clients]] version``.
        self.versions, self.client_versions = self._versions(problems)
        self._stores(problems)
        self.admin_token = self._secret(
            root.admin.token, root.admin.token_env, ("admin",), problems
        )
        self.alert_webhook = self._secret(
            root.alerts.webhook_url,
            root.alerts.webhook_url_env,
            ("alerts",),
            problems,
            field="webhook_url",
        )
        if root.admin.enabled and self.admin_token is None and root.admin.token_env is None:
            problems.add(("admin", "token"), "required: set token or token_env, or enabled = false")
        if (root.upstream.url is None) == (root.upstream.app is None):
            problems.add(("upstream",), "expected exactly one of url and app")

    # -- building -----------------------------------------------------------------------------

    def _clients(self, problems: Problems) -> None:
        seen: set[str] = set()
        for index, client in enumerate(self.root.clients):
            loc: Loc = ("clients", index)
            if not NAME.fullmatch(client.name):
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
        loc: Loc,
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
        fields: IdempotencyFields, base: IdempotencyPolicy | None, loc: Loc, problems: Problems
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
            problems.refused(loc, exc, IdempotencyFields.model_fields)
            return base if base is not None else IdempotencyPolicy()

    def _rate_limits(self, problems: Problems) -> tuple[RateLimitPolicy, ...]:
        by_name = {name: principal for principal, name in self.principals.items()}
        built: list[RateLimitPolicy] = []
        names: set[str] = set()
        for index, policy in enumerate(self.root.rate_limit.policies):
            loc: Loc = ("rate_limit", "policies", index)
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
            rollout = self._rollout(policy, loc, problems)
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
                        shadow=policy.shadow and rollout is None,
                        rollout=rollout,
                        on_store_error=policy.on_store_error,
                    )
                )
            except ConfigurationError as exc:
                problems.refused(loc, exc, Policy.model_fields)
        return tuple(built)

    def _rollout(self, policy: Policy, loc: Loc, problems: Problems) -> Rollout | None:
        """A policy's ``rollout`` table as a ``Rollout``: its ``[[clients]]`` names as their
        principals (API key and address); never beside ``shadow = true``."""
        table = policy.rollout
        if table is None:
            return None
        if policy.shadow:
            problems.add(
                (*loc, "shadow"),
                "expected false beside a rollout (the rollout shadows the clients it does "
                "not enforce): remove shadow = true to start the rollout",
            )
        known = {client.name for client in self.root.clients}
        for position, name in enumerate(table.clients):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.add(
                    (*loc, "rollout", "clients", position),
                    f"unknown client {name!r}: expected a name from [[clients]]{hint}",
                )
        names = set(table.clients)
        principals = [p for p, name in self.principals.items() if name in names]
        return Rollout(percent=table.percent, principals=principals)

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
        loc: Loc = ("identity", "address_limits")
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
            problems.refused(loc, exc, Policy.model_fields, here=True)
            return ()
        return (ceiling,)

    def _abuse(self, problems: Problems) -> AbuseSetup:
        """``[abuse]``: entries canonical, overlaps between bans and allows refused, failure
        rules built with their routes and account sources, the challenge that rules and
        anomalies may lead to present."""
        abuse = self.root.abuse
        entries: list[tuple[Loc, Entry]] = []
        for action, tables in ((Action.BAN, abuse.ban), (Action.ALLOW, abuse.allow)):
            for index, entry_table in enumerate(tables):
                loc: Loc = ("abuse", action.value, index)
                for entry in self._abuse_entries(action, entry_table, loc, problems):
                    entries.append((loc, entry))
        allows = [(loc, e) for loc, e in entries if e.action is Action.ALLOW]
        for loc, ban in entries:
            if ban.action is not Action.BAN:
                continue
            for other, allow in allows:
                if overlaps(ban, allow):
                    problems.add(
                        loc,
                        f"overlaps [[abuse.allow]] number {int(other[2]) + 1} ({allow.value}): an "
                        "allow always wins, so this ban would not hold there; narrow one of them",
                    )
        rules: list[FailureRule] = []
        names: set[str] = set()
        for index, table in enumerate(abuse.failures):
            loc = ("abuse", "failures", index)
            if not NAME.fullmatch(table.name):
                problems.add(
                    (*loc, "name"), f"expected letters, digits, '_', '-' or '.', got {table.name!r}"
                )
            elif table.name in names:
                problems.add((*loc, "name"), f"{table.name!r} is used by an earlier rule")
            names.add(table.name)
            for position, template in enumerate(table.routes):
                try:
                    RouteTable([(template, None)])
                except ConfigurationError as exc:
                    problems.add((*loc, "routes", position), str(exc))
            source = None
            if table.account is not None:
                try:
                    source = AccountSource.parse(table.account)
                except ValueError as exc:
                    problems.add((*loc, "account"), str(exc))
            elif table.by == "account":
                problems.add(
                    (*loc, "account"),
                    "required with by = 'account': where the account tried is "
                    "('json:FIELD', 'form:FIELD', 'header:NAME', 'query:NAME' or 'basic')",
                )
            if table.challenge_after is not None and abuse.challenge is None:
                problems.add(
                    (*loc, "challenge_after"),
                    "expected an [abuse.challenge] table: what a suspicious client gets",
                )
            fields = table.model_dump(exclude={"routes", "by", "statuses", "account"})
            rules.append(
                FailureRule(
                    routes=tuple(table.routes),
                    by=Kind(table.by),
                    statuses=table.status_codes(),
                    account=source,
                    **fields,
                )
            )
        anomaly = None
        response = AnomalyResponse()
        table_a = abuse.anomaly
        if table_a is not None and table_a.enabled:
            response_fields = {"action", "tighten_to", "tighten_for"}
            anomaly = AnomalySettings(**table_a.model_dump(exclude={"enabled", *response_fields}))
            response = AnomalyResponse(**table_a.model_dump(include=response_fields))
            if table_a.action == "challenge" and abuse.challenge is None:
                problems.add(
                    ("abuse", "anomaly", "action"),
                    "expected an [abuse.challenge] table: what a suspicious client gets",
                )
        challenge = None
        if abuse.challenge is not None:
            table_c = abuse.challenge
            if table_c.action == "refuse" and table_c.url is None:
                problems.add(
                    ("abuse", "challenge", "url"),
                    "required with action = 'refuse': the page where a client passes the challenge",
                )
            challenge = Challenge(
                action=table_c.action,
                url=table_c.url or "",
                header=table_c.header,
                retry_after=table_c.retry_after,
            )
        return AbuseSetup(
            entries=tuple(entry for _, entry in entries),
            rules=tuple(rules),
            anomaly=anomaly,
            response=response,
            challenge=challenge,
        )

    def _abuse_entries(
        self, action: Action, table: AbuseEntry, loc: Loc, problems: Problems
    ) -> list[Entry]:
        given = [
            (name, value)
            for name in ("address", "network", "principal", "account")
            if (value := getattr(table, name)) is not None
        ]
        if len(given) != 1:
            problems.add(loc, "expected exactly one of address, network, principal and account")
            return []
        name, value = given[0]
        if table.expires is None and action is Action.BAN and self.root.abuse.require_expiry:
            problems.add(
                (*loc, "expires"), "required: [abuse] require_expiry says every ban must expire"
            )
        until = table.expires.timestamp() if table.expires is not None else math.inf
        values: list[tuple[Kind, str]] = []
        owned = [p for p, client in self.principals.items() if client == value]
        if name == "account":
            values.append((Kind.ACCOUNT, account_hash(value, self.abuse_secret)))
        elif name == "principal" and owned:  # a client's name: each of its principals
            values.extend((Kind.PRINCIPAL, p) for p in owned)
        elif name == "principal" and not value.startswith(("cred:", "user:", "addr:")):
            problems.add(
                (*loc, "principal"),
                f"expected a [[clients]] name or a principal ('cred:...', 'user:...', "
                f"'addr:...'), got {value!r}",
            )
            return []
        else:
            try:
                values.append((Kind(name), subject(name, value)))
            except ValueError as exc:
                problems.add((*loc, name), str(exc))
                return []
        return [
            Entry(
                action=action,
                kind=kind,
                value=canonical,
                until=until,
                reason=table.reason,
                source="config",
            )
            for kind, canonical in values
        ]

    def _lifecycles(self, problems: Problems) -> dict[str, Lifecycle]:
        names = {client.name for client in self.root.clients}
        out: dict[str, Lifecycle] = {}
        for index, route in enumerate(self.root.routes):
            table = route.deprecation
            if table is None or route.match in out:
                continue
            loc: Loc = ("routes", index, "deprecation")
            found = len(problems.items)
            sunset = table.sunset.timestamp() if table.sunset is not None else None
            for name in [*(table.clients or ()), *table.extensions]:
                if name not in names:
                    where = "clients" if name in (table.clients or ()) else "extensions"
                    problems.add((*loc, where), _unknown_client(name, names))
            extensions = {name: when.timestamp() for name, when in table.extensions.items()}
            deprecated = table.deprecated.timestamp()
            for name in table.extensions:
                if table.clients is not None and name not in table.clients:
                    problems.add(
                        (*loc, "extensions", name),
                        f"{name!r} is not in clients: the deprecation does not apply to it",
                    )
            for name, when in extensions.items():
                if sunset is None:
                    problems.add((*loc, "extensions"), "an extension needs a sunset to extend")
                    break
                if when <= sunset:
                    problems.add(
                        (*loc, "extensions", name),
                        f"expected a moment after the sunset ({table.sunset}), "
                        f"got {table.extensions[name]}",
                    )
            windows = []
            for number, brownout in enumerate(table.brownouts):
                start = brownout.start.timestamp()
                if start < deprecated:
                    problems.add(
                        (*loc, "brownouts", number, "start"),
                        f"expected a moment from deprecated ({table.deprecated}) on: a route "
                        "is browned out only once deprecated",
                    )
                if sunset is not None and start >= sunset:
                    problems.add(
                        (*loc, "brownouts", number, "start"),
                        f"expected a moment before the sunset ({table.sunset}): after it, "
                        "the route is retired anyway",
                    )
                windows.append(Window(start, start + brownout.duration))
            schedule = None
            if table.brownout_schedule is not None:
                weekly = table.brownout_schedule
                hours, minutes = weekly.at.split(":")
                starts = weekly.starts or table.deprecated
                if starts < table.deprecated:
                    problems.add(
                        (*loc, "brownout_schedule", "starts"),
                        f"expected a moment from deprecated ({table.deprecated}) on: a route "
                        "is browned out only once deprecated",
                    )
                if sunset is not None and starts.timestamp() >= sunset:
                    problems.add(
                        (*loc, "brownout_schedule", "starts"),
                        f"expected a moment before the sunset ({table.sunset})",
                    )
                schedule = Schedule(
                    days=frozenset(_WEEKDAYS.index(day) for day in weekly.days),
                    at=int(hours) * 3600.0 + int(minutes) * 60.0,
                    duration=weekly.duration,
                    final_duration=weekly.final_duration,
                    starts=starts.timestamp(),
                )
            if len(problems.items) > found:
                continue
            out[route.match] = Lifecycle(
                deprecated=deprecated,
                sunset=sunset,
                link=table.link,
                sunset_link=table.sunset_link,
                replacement=table.replacement,
                clients=frozenset(table.clients) if table.clients is not None else None,
                extensions=extensions,
                windows=tuple(windows),
                schedule=schedule,
                brownout_critical=table.brownout_critical,
            )
        return out

    def _versions(self, problems: Problems) -> tuple[VersionSet | None, dict[str, str]]:
        table = self.root.versions
        pinned = {c.name: c.version for c in self.root.clients if c.version is not None}
        for index, client in enumerate(self.root.clients):
            if client.version is None:
                continue
            if table is None:
                problems.add(
                    ("clients", index, "version"),
                    "a client's version needs [versions] with its dates",
                )
            elif client.version not in table.dates:
                problems.add(
                    ("clients", index, "version"),
                    f"expected one of [versions] dates ({', '.join(table.dates)}), "
                    f"got {client.version!r}",
                )
        if table is None:
            return None, {}
        versions = VersionSet(
            tuple(table.dates), initial=table.initial, pin=table.pin, header=table.header
        )
        return versions, pinned

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
            (("top", "store"), self.root.top.store),
            (("alerts", "store"), self.root.alerts.store),
            (("abuse", "store"), self.root.abuse.store),
            *((("versions", "store"), v.store) for v in (self.root.versions,) if v is not None),
            *(
                (("webhooks", "receive", index, "store"), table.store)
                for index, table in enumerate(self.root.webhooks.receive)
            ),
        ):
            if name not in self.root.stores:
                problems.add(
                    loc,
                    f"expected a name from [stores] ({', '.join(self.root.stores)}), got {name!r}",
                )

    def _webhooks(self, problems: Problems) -> None:
        paths: set[str] = set()
        names: set[str] = set()
        for index, table in enumerate(self.root.webhooks.receive):
            loc: Loc = ("webhooks", "receive", index)
            try:
                canonical = canonical_path(table.path.encode("utf-8")).path
            except InvalidPath:
                canonical = ""
            # A template's "{id}" would match only itself: a path of one sender is exact.
            template = "{" in table.path or "}" in table.path
            if not table.path.startswith("/") or canonical != table.path or template:
                hint = ""
                if canonical.startswith("/") and canonical != table.path:
                    hint = f" (it is {canonical!r})"
                problems.add(
                    (*loc, "path"),
                    "expected an exact path in canonical form (no template, no '//', '.' "
                    f"or '..' segment), such as '/webhooks/stripe', got {table.path!r}{hint}",
                )
            elif table.path in paths:
                problems.add((*loc, "path"), f"{table.path!r} is received by an earlier table")
            paths.add(table.path)
            if table.name in names:
                problems.add((*loc, "name"), f"{table.name!r} is used by an earlier table")
                continue
            names.add(table.name)
            url = self.root.stores.get(table.store)
            if table.archive and url is not None and _scheme(url) in _NO_ARCHIVE:
                problems.add(
                    (*loc, "archive"),
                    f"store {table.store!r} is PostgreSQL, which does not archive webhook "
                    "events yet: archive them in a SQLite or Redis store, or set archive = false",
                )
            endpoint = _webhook_endpoint(table, loc, problems)
            if endpoint is not None:
                self.webhooks[table.name] = Webhook(table.path, endpoint, table.store)

    def _sender(self, problems: Problems) -> Sender | None:
        table = self.root.webhooks.send
        if table is None:
            return None
        loc: Loc = ("webhooks", "send")
        schedule = None if table.schedule is None else tuple(table.schedule)
        sender = Sender(
            table.database,
            table.prefix,
            None if table.event_types is None else tuple(table.event_types),
            schedule,
            table.disable_after,
            table.retention,
            table.timeout,
            table.workers,
            table.max_in_flight,
            tuple(table.allow_networks) if table.allow_networks else table.allow_private,
        )
        if table.allow_private and table.allow_networks:
            problems.add(
                (*loc, "allow_networks"),
                "expected allow_private = true or allow_networks, not both "
                "(allow_private = true allows every network)",
            )
        try:
            sender.outbox()  # its checks; nothing is opened (Rule 2)
        except ConfigurationError as exc:
            # Outbox names the field, and an item's index: "schedule[2]: expected ...".
            found = _OUTBOX_REFUSAL.match(str(exc))
            if found is None:
                problems.add(loc, masked_text(str(exc), table.database))
                return None
            name, index, message = found.groups()
            where: Loc = (*loc, name) if index is None else (*loc, name, int(index))
            problems.add(where, masked_text(message, table.database))
            return None
        return sender

    def _sagas(self, problems: Problems) -> Sagas | None:
        table = self.root.sagas
        if table is None:
            return None
        from surefoot.saga import SagaLog

        try:
            SagaLog(table.database, prefix=table.prefix)  # its checks; nothing is opened
        except ConfigurationError as exc:
            field, _, message = str(exc).partition(": ")
            name = field.rpartition(".")[2]
            where: Loc = ("sagas", name) if name in ("database", "prefix") else ("sagas",)
            problems.add(where, masked_text(message or str(exc), table.database))
            return None
        return table

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
        data["alerts"]["webhook_url"] = "***" if data["alerts"]["webhook_url"] else None
        for client in data["clients"]:
            if client["api_key"]:
                client["api_key"] = "***"
        data["stores"] = {name: masked_url(url) for name, url in data["stores"].items()}
        send = data["webhooks"].get("send")
        if send is not None:
            send["database"] = masked_url(send["database"])
        if data.get("sagas") is not None:
            data["sagas"]["database"] = masked_url(data["sagas"]["database"])
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


#: ``Outbox``'s refusal of a field (or of one item of a list field).
_OUTBOX_REFUSAL = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?: (.*)$", re.S)

#: The name of the policy ``[identity] address_limits`` builds (in headers and problems).
_ADDRESS_POLICY = "address"


def _scheme(url: str) -> str:
    """A store URL's scheme, or "" if it cannot be split (``_stores`` says so)."""
    try:
        return split_url(url).scheme
    except ConfigurationError:
        return ""


_SCHEMES: dict[str, type[Any]] = {
    "standard_webhooks": StandardWebhooks,
    "stripe": Stripe,
    "github": GitHub,
    "hmac": Hmac,
}
#: A scheme's refusal of one of its secrets: ``Stripe.secrets[1]: expected ...``.
_SECRET_REFUSED = re.compile(r"^[A-Za-z]+\.secrets\[(\d+)\]: (.*)$", re.S)


#: Store URL schemes whose stores keep no archived webhook events (no ``EventArchive``).
_NO_ARCHIVE = frozenset({"postgres", "postgresql"})


def _webhook_endpoint(
    table: WebhookReceive, loc: Loc, problems: Problems
) -> WebhookEndpoint | None:
    """The endpoint ``table`` describes, or None with its problems added."""
    fields = WebhookReceive.model_fields
    before = len(problems.items)
    secrets: list[str] = []
    for i, env in enumerate(table.secrets_env):
        value = os.environ.get(env)
        if value is None:
            problems.add((*loc, "secrets_env", i), f"the environment variable {env!r} is not set")
        elif not value:
            problems.add((*loc, "secrets_env", i), f"the environment variable {env!r} is empty")
        secrets.append(value or "")
    options: dict[str, Any] = {}
    if table.scheme == "hmac":
        if table.header is None:
            problems.add(
                (*loc, "header"), 'required with scheme = "hmac" (the signature\'s header)'
            )
        options = {n: getattr(table, n) for n in HMAC_FIELDS if getattr(table, n) is not None}
        if table.tolerance is not None and table.timestamp_header is None:
            problems.add(
                (*loc, "tolerance"),
                "only with timestamp_header: without a signed timestamp nothing expires",
            )
        if table.id_header is None and table.event_id_header is None and not table.event_id_field:
            problems.add(
                loc,
                "expected id_header, event_id_header or event_id_field: the hmac scheme "
                "carries no event id of its own",
            )
    else:
        for name in HMAC_FIELDS:
            if getattr(table, name) is not None:
                problems.add((*loc, name), f'only with scheme = "hmac", not {table.scheme!r}')
        if table.scheme == "github" and table.tolerance is not None:
            problems.add((*loc, "tolerance"), "GitHub signs no timestamp: remove tolerance")
    if table.tolerance is not None:
        options["tolerance"] = table.tolerance
    event_id = None
    if table.event_id_header is not None and table.event_id_field is not None:
        problems.add(
            (*loc, "event_id_field"), "expected event_id_header or event_id_field, not both"
        )
    else:
        try:
            if table.event_id_header is not None:
                event_id = EventId(header=table.event_id_header)
            elif table.event_id_field is not None:
                event_id = EventId(field=table.event_id_field)
        except ConfigurationError as exc:
            name = "event_id_header" if table.event_id_header is not None else "event_id_field"
            problems.add((*loc, name), str(exc).partition(": ")[2])
    ordering = None
    if table.ordering is not None:
        try:
            ordering = Ordering(**table.ordering.model_dump())
        except ConfigurationError as exc:
            problems.refused((*loc, "ordering"), exc, WebhookOrdering.model_fields)
    if len(problems.items) > before:
        return None  # a secret missing or a field refused: the scheme cannot be built
    try:
        scheme: Scheme = _SCHEMES[table.scheme](secrets=tuple(secrets), **options)
    except ConfigurationError as exc:
        secret = _SECRET_REFUSED.match(str(exc))
        if secret is not None:  # the scheme never quotes a secret; nor does this
            i = int(secret.group(1))
            problems.add(
                (*loc, "secrets_env", i),
                f"the value of {table.secrets_env[i]!r}: {secret.group(2)}",
            )
        else:
            problems.refused(loc, exc, fields)
        return None
    try:
        return WebhookEndpoint(
            name=table.name,
            scheme=scheme,
            event_id=event_id,
            retention=table.retention,
            lease=table.lease,
            ordering=ordering,
            max_body=table.max_body,
            archive=table.archive,
        )
    except ConfigurationError as exc:
        problems.refused(loc, exc, fields)
        return None


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
    config = GatewayConfig(problems.validated(Root, data), source, problems)
    problems.raise_if_any()
    return config


#: ``[routes.deprecation.brownout_schedule] days``, Monday first.
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _unknown_client(name: str, known: set[str]) -> str:
    """The message for a client name that no ``[[clients]]`` table has."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown client {name!r}: expected a name from [[clients]]{hint}"
