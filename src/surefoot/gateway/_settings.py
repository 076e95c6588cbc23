"""The policy file's protections for an app in a WSGI framework (Django, Flask).

``app_settings(data)`` reads the tables of the gateway's policy file that apply inside an
app, from a mapping (``settings.SUREFOOT``, ``app.config["SUREFOOT"]``) or from a TOML file
it names (``{"config": "policy.toml"}``), and validates them with the gateway's own code
(``config_from_dict``'s checks, ``_schema.py``'s models): one parser, one set of messages.
``AppSettings`` holds what the guards of ``surefoot.wsgi`` are built with, and builds them.

The tables that apply::

    [stores]             name = "store URL" (the synchronous store of that URL)
    [identity]           credential_headers, address_limits
    [[clients]]          name, api_key | api_key_env | address, tier, critical
    [idempotency]        store, the default policy of every route
    [rate_limit]         store, headers, legacy_headers, [[rate_limit.policies]]
    [[routes]]           match, idempotency (table or false)
    [server]             trusted_proxies, forwarded_header, max_request_body,
                         allow_method_override (the rest is the WSGI server's business)

Rule 1: one parser. The data is validated by ``GatewayConfig`` exactly as a policy file
        is; a mapping lacks ``[upstream]`` (the app is the upstream) and ``[admin]``'s
        token, so ``upstream.app`` and ``admin.enabled = false`` are filled in before it
        is validated when they are absent, and never read afterwards; so are the
        stores of the gateway's own ``[top]``, ``[alerts]`` and ``[abuse]``.
Rule 2: a mapping holds only what applies: a table of the gateway alone (``upstream``,
        ``admin``, ``webhooks``...) or a ``[server]`` field the WSGI server owns is refused
        with its path, so nothing written in settings is silently ignored. A file named by
        ``config`` may be the gateway's own: its other tables are validated and ignored.
Rule 3: every message starts with ``source`` (``settings.SUREFOOT``), then the field's
        path and what is expected; secrets never appear in them (``GatewayConfig``'s
        Rule 3). A Python tuple is read as a list (TOML has only arrays).
Rule 4: in-process defaults. A policy that does not set ``on_server_error`` releases the
        key after a 5xx or an exception (``release``, the in-process middlewares'
        default: the view runs in the app's own transaction), not the gateway's
        ``unknown``.
Rule 5: nothing is opened while reading: ``AppSettings.store`` opens a store on first use,
        once per URL, so the idempotency and rate-limit guards of one process share it.
Rule 5b: a store URL's options are checked while reading (its scheme's own parser, as
        ``sync_store_from_url`` reads them, without opening it): a bad option fails
        ``manage.py check`` and the app's start, named ``source: stores.NAME``.
Rule 6: an app protects only what its settings list for idempotency: the routes with an
        ``idempotency`` table, and every route only when an ``[idempotency]`` table sets a
        policy field (more than its ``store``). An app serves its login form, admin and
        other writes that send no key, where the gateway fronts an API.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from surefoot._config import read_toml
from surefoot.errors import ConfigurationError
from surefoot.gateway._config import GatewayConfig, _validated
from surefoot.gateway._gateway import _EVERY_REQUEST
from surefoot.idempotency import IdempotencyPolicy
from surefoot.identity import Identity
from surefoot.storage import check_store_url

if TYPE_CHECKING:
    from surefoot.ratelimit import RateLimitPolicy, TierResolver
    from surefoot.storage import SyncStore
    from surefoot.wsgi import IdempotencyGuard, RateLimitGuard

__all__ = ["AppSettings", "app_settings"]

#: The policy file's tables that apply inside an app (Rule 2).
APP_TABLES = frozenset(
    {"stores", "identity", "clients", "idempotency", "rate_limit", "routes", "server"}
)
#: The ``[server]`` fields that apply inside an app; the WSGI server owns the others.
APP_SERVER_FIELDS = frozenset(
    {"trusted_proxies", "forwarded_header", "max_request_body", "allow_method_override"}
)
#: Filled in when absent (Rule 1): never read.
_UPSTREAM = {"app": "surefoot.gateway:app_settings"}
_ADMIN = {"enabled": False}
#: The gateway's tables that name a store and that an app never reads.
_STORE_TABLES = ("top", "alerts", "abuse")


class AppSettings:
    """The protections ``settings.SUREFOOT`` describes, validated (nothing opened).

    Attributes:
        source: where they were read (``settings.SUREFOOT``), first in every message.
        config: the ``GatewayConfig`` they were validated as.
        stores: store name -> URL (``[stores]``).
        idempotency_store, rate_limit_store: the URLs of ``[idempotency] store`` and
            ``[rate_limit] store``.
        identity: the principal resolver (``[identity]``, ``[[clients]]`` API keys,
            ``[server] trusted_proxies``).
        idempotency_policy: the default policy; ``idempotency_routes`` route template ->
            its policy (None: unprotected).
        protects: whether any request can be protected by an idempotency key.
        rate_limit_policies: the built ``RateLimitPolicy`` values (empty: no limits).
        tiers: principal -> tier (``[[clients]] tier``); ``tier`` its resolver or None.
        headers, legacy_headers: ``[rate_limit]``'s header choices.
        max_request_body, allow_method_override: ``[server]``'s.
    """

    def __init__(
        self, config: GatewayConfig, source: str, *, identity: type[Identity] = Identity
    ) -> None:
        root = config.root
        self.source = source
        self.config = config
        self.stores: dict[str, str] = dict(root.stores)
        _check_stores(source, self.stores)  # Rule 5b
        _check_keys(source, config)
        self.idempotency_store = config.store_url(root.idempotency.store)
        self.rate_limit_store = config.store_url(root.rate_limit.store)
        self.identity = identity(
            credential_headers=root.identity.credential_headers,
            trusted_proxies=root.server.trusted_proxies,
            forwarded_header=root.server.forwarded_header,
            known_credentials=config.api_keys or None,
        )
        default = config.idempotency_policy
        if "on_server_error" not in root.idempotency.model_fields_set:
            default = replace(default, on_server_error="release")  # Rule 4
        if not set(root.idempotency.model_fields_set) - {"store"}:
            default = replace(default, methods=frozenset())  # Rule 6: only listed routes
        self.idempotency_policy: IdempotencyPolicy = default
        self.idempotency_routes: dict[str, IdempotencyPolicy | None] = {}
        for match, policy in config.idempotency_routes.items():
            table = config.route_options[match].idempotency
            inherits = table is not None and "on_server_error" not in table.model_fields_set
            if policy is not None and inherits:
                policy = replace(policy, on_server_error=default.on_server_error)
            self.idempotency_routes[match] = policy
        self.protects = _protects(default, self.idempotency_routes)
        self.rate_limit_policies: tuple[RateLimitPolicy, ...] = tuple(config.rate_limit_policies)
        self.tiers: dict[str, str] = dict(config.tiers)
        self.headers = root.rate_limit.headers
        self.legacy_headers = root.rate_limit.legacy_headers
        self.max_request_body = root.server.max_request_body
        self.allow_method_override = root.server.allow_method_override
        self._opened: dict[str, SyncStore] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"AppSettings(source={self.source!r}, routes={len(self.idempotency_routes)}, "
            f"policies={[p.name for p in self.rate_limit_policies]})"
        )

    @property
    def tier(self) -> TierResolver | None:
        """The tier resolver of ``[[clients]] tier`` (None: no client has a tier)."""
        tiers = self.tiers
        if not tiers:
            return None
        return lambda scope, principal: tiers.get(principal)

    def store(self, url: str) -> SyncStore:
        """The synchronous store of ``url``, opened on first use, one per URL (Rule 5)."""
        with self._lock:
            store = self._opened.get(url)
            if store is None:
                from surefoot.storage import sync_store_from_url

                store = self._opened[url] = sync_store_from_url(url)
            return store

    def idempotency_guard(self, **options: Any) -> IdempotencyGuard | None:
        """An ``IdempotencyGuard`` of these settings (None: no route is protected).

        ``options`` are passed on to it and win (``clock``, ``hooks``, ``store``...).
        """
        if not self.protects and "policy" not in options and "routes" not in options:
            return None
        from surefoot.wsgi import IdempotencyGuard

        arguments: dict[str, Any] = {
            "policy": self.idempotency_policy,
            "routes": self.idempotency_routes,
            "principal": self.identity,
            "max_request_body": self.max_request_body,
            "allow_method_override": self.allow_method_override,
        }
        arguments.update(options)
        if "store" not in arguments:
            arguments["store"] = self.store(self.idempotency_store)
        return IdempotencyGuard(**arguments)

    def rate_limit_guard(self, **options: Any) -> RateLimitGuard | None:
        """A ``RateLimitGuard`` of these settings (None: no rate-limit policy).

        ``options`` are passed on to it and win (``clock``, ``hooks``, ``policies``...).
        """
        if not self.rate_limit_policies and "policies" not in options:
            return None
        from surefoot.wsgi import RateLimitGuard

        arguments: dict[str, Any] = {
            "policies": self.rate_limit_policies,
            "principal": self.identity,
            "tier": self.tier,
            "headers": self.headers,
            "legacy_headers": self.legacy_headers,
            "allow_method_override": self.allow_method_override,
        }
        arguments.update(options)
        if "store" not in arguments:
            arguments["store"] = self.store(self.rate_limit_store)
        return RateLimitGuard(**arguments)


def _check_keys(source: str, config: GatewayConfig) -> None:
    """Refuse two ``[[clients]]`` with the same API key: a request could not say which
    client it is (never the key in the message)."""
    keys = config.api_keys
    if len(set(keys)) == len(keys):
        return
    from surefoot.identity import hash_credential

    twice = {key for key in keys if keys.count(key) > 1}
    names = sorted({config.principals.get(hash_credential(key.encode()), "?") for key in twice})
    raise ConfigurationError(
        f"{source}: clients: expected a different api_key for each client; "
        f"{len(keys) - len(set(keys)) + len(twice)} clients share a key (the last of them, "
        f"{', '.join(repr(n) for n in names)}, would be the one recognised)"
    )


def _check_stores(source: str, stores: Mapping[str, str]) -> None:
    """Each store URL's options parsed as its store reads them, nothing opened (Rule 5b)."""
    problems: list[str] = []
    for name, url in stores.items():
        try:
            check_store_url(url)
        except ConfigurationError as exc:
            problems.append(f"{source}: stores.{name}: {exc}")
    if len(problems) == 1:
        raise ConfigurationError(problems[0])
    if problems:
        listed = "\n".join(f"  {item}" for item in problems)
        raise ConfigurationError(f"{source}: {len(problems)} problems:\n{listed}")


def _protects(default: IdempotencyPolicy, routes: Mapping[str, IdempotencyPolicy | None]) -> bool:
    """Whether some request can be protected: a policy names a method, and no route
    matching every request leaves it unprotected before a route protects one."""
    if not any(policy.methods for policy in (default, *routes.values()) if policy is not None):
        return False
    for template, policy in routes.items():
        if policy is not None and policy.methods:
            return True
        if policy is None and _EVERY_REQUEST.fullmatch(template.strip()):
            return False
    return bool(default.methods)


def app_settings(
    data: object, source: str = "settings.SUREFOOT", *, identity: type[Identity] = Identity
) -> AppSettings:
    """The protections ``data`` describes: the policy file's tables as a mapping, or
    ``{"config": "path/to/policy.toml"}``.

    Example:
        >>> settings = app_settings({
        ...     "stores": {"default": "sqlite:///surefoot.db"},
        ...     "routes": [{"match": "POST /charges", "idempotency": {"required": True}}],
        ...     "rate_limit": {"policies": [{"name": "api", "limits": ["100/minute"]}]},
        ... })
        >>> guard = settings.idempotency_guard()

    ``identity`` is the class of the principal resolver (an adapter's ``Identity``
    subclass), built with the settings' ``[identity]``, ``[[clients]]`` and ``[server]``.

    Raises:
        ConfigurationError: ``data`` is not a mapping, holds a table or field that only
            the gateway reads, or is invalid; every problem is listed as
            ``source: field.path: expected ...`` (a file's as ``source['config']:
            file:line: field.path: ...``).
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{source}: expected a dict of the policy file's tables or "
            f"{{'config': 'path/to/policy.toml'}}, got {type(data).__name__}"
        )
    if "config" in data:
        path = data["config"]
        if len(data) > 1:
            others = ", ".join(sorted(str(k) for k in data if k != "config"))
            raise ConfigurationError(
                f"{source}: expected 'config' alone (the tables in that file) or the tables "
                f"inline, not both; got also {others}"
            )
        if not isinstance(path, str | os.PathLike):
            raise ConfigurationError(
                f"{source}: config: expected the path of a TOML policy file, "
                f"got {type(path).__name__}"
            )
        try:
            parsed, name, lines = read_toml(path)
            config = _validated(_completed(parsed), name, lines)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}['config']: {exc}") from None
        return AppSettings(config, source, identity=identity)
    problems = [
        f"{source}: {where}: {why}"
        for key, value in data.items()
        for where, why in _refused(str(key), value)
    ]
    if len(problems) == 1:
        raise ConfigurationError(problems[0])
    if problems:
        listed = "\n".join(f"  {item}" for item in problems)
        raise ConfigurationError(f"{source}: {len(problems)} problems:\n{listed}")
    config = _validated(_completed(_lists(data)), source, None)
    return AppSettings(config, source, identity=identity)


def _refused(key: str, value: object) -> list[tuple[str, str]]:
    """The fields of table ``key`` of a settings mapping that are refused (Rule 2), each
    with why."""
    from surefoot.gateway._schema import Root

    if key == "server" and isinstance(value, Mapping):
        expected = ", ".join(sorted(APP_SERVER_FIELDS))
        return [
            (
                f"server.{name}",
                f"not read inside an app (your WSGI server's setting); expected only {expected}",
            )
            for name in sorted(str(k) for k in value if k not in APP_SERVER_FIELDS)
        ]
    if key in APP_TABLES or key not in Root.model_fields:
        return []  # an unknown table: the schema names it, with a suggestion
    return [
        (
            key,
            f"a table of the gateway (surefoot serve), not read inside an app; expected "
            f"only {', '.join(sorted(APP_TABLES))} (or 'config' naming a policy file)",
        )
    ]


def _completed(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``[upstream]`` and ``[admin]`` filled in when absent, and the gateway's
    own tables that name a store (``[top]``, ``[alerts]``, ``[abuse]``) pointed at the
    idempotency store, so that stores need not be called "default" (Rule 1)."""
    out = dict(data)
    out.setdefault("upstream", dict(_UPSTREAM))
    out.setdefault("admin", dict(_ADMIN))
    idempotency = out.get("idempotency")
    store = idempotency.get("store") if isinstance(idempotency, Mapping) else None
    if isinstance(store, str):
        for table in _STORE_TABLES:
            out.setdefault(table, {"store": store})
    return out


def _lists(value: Any) -> Any:
    """``value`` with every tuple a list, in mappings and lists too (Rule 3)."""
    if isinstance(value, Mapping):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(item) for item in value]
    return value
