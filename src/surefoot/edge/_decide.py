"""``DecisionApp``: the decision service an edge proxy (NGINX, HAProxy) asks before it
forwards a request, with the gateway's policies, identity rules and store.

Per request to ``/decide`` (any method; the body is never read)::

    edge ─► /decide ─► the original request rebuilt from headers ─► canonicalize
             ─► credentials ─► the rate limiter ─► 200 empty (allowed)

(all but the counting done once per method, URI, address and credentials: Rule 7).

The headers are read in one pass; the rate limiter is ``RateLimitMiddleware``'s, asked
directly as the middleware asks it, and an allowed decision is one response built here;
the identity remembers its answers about addresses (``_EdgeIdentity``).

The original request is described by ``X-Original-Method`` and ``X-Original-URI``
(the path and query as the client sent them); its credentials are the identity's
credential headers, forwarded by the edge as the client sent them. ``/healthz`` answers
200 while the process serves, ``/readyz`` 200 while the store answers.

Rule 1: the client's address is the TCP peer, unless the peer is one of
        ``[server] trusted_proxies`` (the edge): then it is the last address of the
        configured forwarding header (``X-Forwarded-For`` by default: what the edge wrote;
        with ``Forwarded`` configured and absent, ``X-Forwarded-For``, which HAProxy
        writes), else of ``X-Real-IP``, else the peer. From any other peer the forwarding headers
        are ignored, so a client cannot choose the address it is counted as. A peer with
        no address whose connection came on a Unix socket (ASGI's ``server`` is ``[path,
        None]``: ``surefoot decide --uds``) is the edge: whoever may open the socket file.
Rule 2: the decision is the gateway's, from the same configuration: the same ``Identity``
        (credential headers, trusted proxies, known API keys), the same
        ``RateLimitMiddleware`` (policies, tiers, shadow, rollouts, the policy's outage
        behaviour), one store round trip; no idempotency, no upstream, no abuse or
        contract layer. A path that cannot be made canonical is 400 ``invalid_path``
        and ambiguous credentials are 400 ``credentials_ambiguous``, before any counting.
        A path not already in its canonical form (``/a/../b``, ``/a//b``, ``/%61``) is 400
        ``invalid_path`` too: the edge forwards the path as the client sent it, and an
        upstream could resolve it to another route than the one counted.
        A method-override header (``X-HTTP-Method-Override``, ``X-Method-Override``,
        ``X-HTTP-Method``) is 400 ``bad_request`` naming it unless ``[server]
        allow_method_override``: the edge strips them before the upstream, so the decision
        must not count a method the upstream will not run. A ``leaky_queue`` policy is a
        ``ConfigurationError`` (at start and on reload): its delay would run inside the
        decision, beyond the edge's subrequest timeout.
Rule 3: every answer but an allowed decision and the health checks is an RFC 9457 problem
        of the catalogue: a missing, repeated or malformed ``X-Original-Method``, or a
        missing or repeated ``X-Original-URI``, is 400 ``bad_request`` naming the header;
        an ``X-Original-URI`` that is not a path is 400 ``invalid_path``; an unknown
        endpoint is 400 ``bad_request`` too (the catalogue has no generic 404).
Rule 4: in NGINX mode (``?edge=nginx`` or ``X-Surefoot-Edge: nginx``), any answer that is
        not 2xx is sent as 403 (``auth_request`` turns any other status into a 500), with
        ``Surefoot-Status`` (the real status) and ``Surefoot-Problem`` (the problem
        document as ASCII-only JSON on one line) beside ``Retry-After`` and the
        rate-limit fields.
Rule 5: a reload (``reload``) builds a new ``_Decider`` and swaps it in one assignment; a
        request runs entirely on the one in force when it arrived. The store is kept
        while its URL is unchanged, so counters carry on.
Rule 6: temporary overrides made through the gateway's admin API or ``surefoot overrides``
        (``surefoot.gateway.SharedOverrides``) apply here as in the gateway: read at
        start and every second while the app runs (its lifespan), applied to the rate
        limiter in place, and dropped on the request path the moment one expires.
Rule 7: a decision is planned once per ``X-Original-Method``, ``X-Original-URI``, client
        address (Rule 1) and credential headers (each one sent, name and value, in
        order): everything Rule 2 reads of the original request. The next request with
        the same four is neither rebuilt, made canonical nor checked again, and the rate
        limiter reuses its principal and items (``RateLimiter.check``'s ``key``); it is
        counted, decided and answered as any other. At most ``_REMEMBERED`` are kept per
        configuration (then it starts again); a reload starts afresh, an override
        change drops the limiter's. A request with a method-override header, one
        refused, or one whose method, URI and credentials take more than 1 KiB, is never
        kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_to_bytes

from surefoot._asgi import (
    Message,
    Receive,
    Scope,
    Send,
    adopt_request_id,
    canonicalize,
    send_problem,
)
from surefoot._health import StoreHealth
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    BadRequest,
    ConfigurationError,
    InvalidPath,
    StoreUnavailable,
    SurefootError,
)
from surefoot.events import EventHook, LoggingHook
from surefoot.gateway import GatewayConfig, SharedOverrides, load_config
from surefoot.identity import Identity
from surefoot.ratelimit import RateLimitMiddleware, RateLimitStore
from surefoot.storage import store_from_url

__all__ = ["DecisionApp"]

_log = logging.getLogger("surefoot.edge")
K = TypeVar("K")
V = TypeVar("V")
#: Seconds between two reads of the temporary overrides (as the gateway's workers).
SYNC_EVERY = 1.0

_ORIGINAL_METHOD = b"x-original-method"
_ORIGINAL_URI = b"x-original-uri"
_EDGE_HEADER = b"x-surefoot-edge"
_REAL_IP = b"x-real-ip"
#: Headers that describe the edge's subrequest, not the client's request: never seen by
#: the rate limiter (the forwarding ones are read once, by ``_client_address``).
_EDGE_ONLY = frozenset(
    {_ORIGINAL_METHOD, _ORIGINAL_URI, _EDGE_HEADER, _REAL_IP, b"x-forwarded-for", b"forwarded"}
)
_EDGES = frozenset({"nginx"})
#: Method-override headers, by their lower-case name: their spelling in errors.
_OVERRIDES = {
    b"x-http-method-override": "X-HTTP-Method-Override",
    b"x-method-override": "X-Method-Override",
    b"x-http-method": "X-HTTP-Method",
}
_REQUEST_ID = b"x-request-id"
#: Every header the decision reads itself, in one pass over the request's (``_Fields``).
_WATCHED = _EDGE_ONLY | _OVERRIDES.keys() | {_REQUEST_ID}
#: How many answers about addresses an ``_EdgeIdentity`` remembers, and how many plans a
#: ``_Decider`` (Rule 7), before it starts again.
_REMEMBERED = 4096
#: A key of the scope ``_original`` builds: its client address was resolved by Rule 1 and
#: it has no forwarding header (so the identity's answer depends on the address alone).
_DESCRIBED = "surefoot.edge.described"
#: Rule 7's key: the original method and URI as sent, the client's address, then each
#: credential header sent (name and value); the most bytes of them a kept key holds
#: (``_REMEMBERED`` keys of any size a head allows would hold hundreds of MiB).
_Key = tuple[bytes | str | tuple[bytes, bytes], ...]
_KEY_BYTES = 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")


@dataclass(frozen=True)
class _Decider:
    """What one configuration composes (Rule 5)."""

    config: GatewayConfig
    identity: Identity
    limiter: RateLimitMiddleware
    store_url: str
    #: The identity's credential headers, and every header ``_Fields`` reads with them.
    credentials: frozenset[bytes]
    watched: frozenset[bytes]
    #: Rule 7: the original requests planned, by their key: method, path, raw path, query.
    described: dict[_Key, tuple[str, str, bytes, bytes]]


class DecisionApp:
    """The decision service as an ASGI app (``surefoot decide`` serves it).

    Example:
        >>> app = DecisionApp(load_config("policy.toml"))
        >>> uvicorn.run(app, port=8090)  # without `surefoot decide`'s bounds and workers

    Args:
        config: the gateway's validated policy file: its ``[rate_limit]`` policies and
            store, ``[identity]``, ``[[clients]]`` (API keys, tiers) and ``[server]``'s
            ``trusted_proxies``, ``forwarded_header`` and ``allow_method_override``.
        config_path: where ``reload`` reads the file again (None: reload needs a config).
        clock: time for the rate limiter (tests inject ``ManualClock``).
        hooks: event hooks added after the logging hook.
        store: the rate-limit store, also the temporary overrides' (default: the one
            ``[rate_limit] store`` names, closed by ``aclose``; one given is the caller's
            to close).
        workers: how many processes share the store (``local_fallback`` shares; default:
            ``[server] workers``).

    Raises:
        ConfigurationError: a policy uses ``leaky_queue`` (Rule 2).

    Warning:
        The edge answers the client after the decision, so a concurrency limit's slot is
        freed as soon as the decision is sent: concurrency limits do not bound the
        requests in flight at the upstream here.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: str | None = None,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] = (),
        store: RateLimitStore | None = None,
        workers: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(), *hooks)
        self.workers = workers if workers is not None else config.root.server.workers
        self._given_store = store
        self._stores: dict[str, Any] = {}
        self._health: dict[int, StoreHealth] = {}
        url = config.store_url(config.root.rate_limit.store)
        self.overrides = SharedOverrides(self._store(url), clock=self.clock, hooks=self.hooks)
        self._syncing: asyncio.Task[None] | None = None
        self.decider = self._build(config)

    @property
    def identity(self) -> Identity:
        return self.decider.identity

    @property
    def limiter(self) -> RateLimitMiddleware:
        return self.decider.limiter

    def _build(self, config: GatewayConfig) -> _Decider:
        """The ``Identity`` and ``RateLimitMiddleware`` the gateway builds from ``config``
        (``surefoot.gateway.Gateway``), over an app that allows."""
        root = config.root
        for policy in config.rate_limit_policies:
            sets = (policy.limits, *policy.tiers.values(), *policy.overrides.values())
            if any(getattr(lim, "algorithm", None) == "leaky_queue" for s in sets for lim in s):
                raise ConfigurationError(
                    f"rate_limit policy {policy.name!r}: leaky_queue is not supported by the"
                    " decision service (its delay would run inside the decision, beyond the"
                    " edge's subrequest timeout); use token_bucket, leaky_bucket or gcra"
                )
        identity = _EdgeIdentity(
            credential_headers=root.identity.credential_headers,
            trusted_proxies=root.server.trusted_proxies,
            forwarded_header=root.server.forwarded_header,
            # Listed API keys: any other credential is rate limited as its address.
            known_credentials=config.api_keys or None,
        )
        url = config.store_url(root.rate_limit.store)
        store = self._store(url)
        health = self._health.setdefault(id(store), StoreHealth())
        tiers = config.tiers
        limiter = RateLimitMiddleware(
            _allow,
            store=store,
            policies=self.overrides.applied(config),
            principal=identity,
            tier=(lambda scope, principal: tiers.get(principal)) if tiers else None,
            headers=root.rate_limit.headers,
            legacy_headers=root.rate_limit.legacy_headers,
            clock=self.clock,
            hooks=self.hooks,
            fallback_workers=self.workers,
            store_health=health,
            allow_method_override=root.server.allow_method_override,
            problem_base=DEFAULT_PROBLEM_BASE,
        )
        credentials = frozenset(identity.credential_headers)
        return _Decider(
            config=config,
            identity=identity,
            limiter=limiter,
            store_url=url,
            credentials=credentials,
            watched=_WATCHED | credentials,
            described={},
        )

    async def sync_overrides(self) -> None:
        """Read the temporary overrides and apply them if the set in force changed; a
        store that fails keeps those in force here."""
        if await self.overrides.refresh():
            self.apply_overrides()

    def apply_overrides(self) -> None:
        """Put the overrides in force on the rate limiter, in place (Rule 6)."""
        decider = self.decider
        decider.limiter.update_policies(self.overrides.policies(decider.config))

    async def _sync_every(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.sync_overrides()

    def _store(self, url: str) -> Any:
        """The store ``url`` names: a rate-limit store and the overrides' board store (every
        store a URL names is both; a store given must be too, for overrides)."""
        if self._given_store is not None:
            return self._given_store
        store = self._stores.get(url)
        if store is None:
            store = self._stores[url] = store_from_url(url)
        return store

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.overrides.expire(self.clock.now()):  # an override ended (Rule 6)
            self.apply_overrides()
        decider = self.decider  # Rule 5: one configuration for the whole request
        identity = decider.identity
        peer = scope.get("client")
        if peer is not None:
            trusted = identity.is_trusted(str(peer[0]))
        else:  # Rule 1: a peer on the service's Unix socket is the edge
            server = scope.get("server")
            trusted = server is not None and server[1] is None
        fields = _Fields(scope["headers"], decider)
        given = fields.first(_REQUEST_ID)
        rid = adopt_request_id(scope, given if trusted else None)
        path = scope["path"]
        try:
            if path == "/decide":
                await self.decide(decider, scope, send, rid=rid, trusted=trusted, fields=fields)
            elif path == "/healthz":
                await _json(send, 200, {"status": "ok"}, rid)
            elif path == "/readyz":
                await self.ready(decider, send, rid)
            else:
                raise BadRequest(reason=f"no endpoint {path!r}: the decision service has /decide")
        except SurefootError as exc:
            await send_problem(send, exc, request_id=rid, base=DEFAULT_PROBLEM_BASE)

    async def decide(
        self,
        decider: _Decider,
        scope: Scope,
        send: Send,
        *,
        rid: str,
        trusted: bool,
        fields: _Fields,
    ) -> None:
        """Answer one decision (Rules 1 to 4).

        The rate limiter is asked directly (``RateLimitMiddleware.limiter``), as the
        middleware asks it, with no app behind: an allowed decision is one response built
        here, refusals go through ``send_problem`` as the middleware's do.
        """
        refuse = _NginxSend(send) if _edge(scope, fields) == "nginx" else send
        address = _client_address(scope, fields, decider.identity, trusted=trusted)
        key = fields.key(address)
        described = None if key is None else decider.described.get(key)
        if described is not None:  # Rule 7
            original = _scope(scope, fields, rid, address, *described)
        else:
            try:
                original = _checked(decider, scope, fields, rid, address)
            except SurefootError as exc:
                await send_problem(refuse, exc, request_id=rid, base=DEFAULT_PROBLEM_BASE)
                return
            if key is not None:
                described = (
                    original["method"],
                    original["path"],
                    original["raw_path"],
                    original["query_string"],
                )
                _keep(decider.described, key, described)
        middleware = decider.limiter
        limiter = middleware.limiter
        verdict = await limiter.check(original, key)
        if verdict is None:  # no policy covers the request
            await _allowed(send, rid, ())
            return
        if verdict.error is not None:
            await send_problem(
                refuse,
                verdict.error,
                request_id=rid,
                base=DEFAULT_PROBLEM_BASE,
                headers=verdict.headers,
            )
            return
        if verdict.delay > 0:  # never expected: leaky_queue is refused (Rule 2)
            await middleware.sleep(verdict.delay)
        if not verdict.held:
            await _allowed(send, rid, verdict.headers)
            return
        try:
            await _allowed(send, rid, verdict.headers)
        finally:  # as RateLimitMiddleware: the slots are freed even if cancelled
            task = asyncio.ensure_future(limiter.release(verdict))
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)
            await asyncio.shield(task)

    async def ready(self, decider: _Decider, send: Send, rid: str) -> None:
        store: Any = decider.limiter.store
        get = getattr(store, "get", None)  # the stores a URL names all answer it
        if get is not None:
            try:
                await get("surefoot-readyz", self.clock.now())
            except Exception:
                raise StoreUnavailable(retry_after=1) from None
        await _json(send, 200, {"status": "ready"}, rid)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Read the overrides in force, then again every ``SYNC_EVERY`` seconds (Rule 6)."""
        if self._syncing is None:
            await self.sync_overrides()
            self._syncing = asyncio.ensure_future(self._sync_every(SYNC_EVERY))

    # -- reloading ---------------------------------------------------------------------------

    async def reload(self, config: GatewayConfig | None = None) -> None:
        """Put a new configuration in force (default: read ``config_path`` again).

        A store the new configuration no longer names stays open until ``aclose``: requests
        that started on the old configuration may still be using it.

        Raises:
            ConfigurationError: the new configuration is invalid; the one in force stays.
        """
        if config is None:
            if self.config_path is None:
                raise ConfigurationError("reload: this decision service has no config_path")
            config = load_config(self.config_path)
        decider = self._build(config)
        self.overrides.store = self._store(decider.store_url)
        self.decider = decider

    async def aclose(self) -> None:
        """Stop reading the overrides; close the stores this app opened (not one it was given)."""
        if self._syncing is not None:
            self._syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncing
            self._syncing = None
        for store in self._stores.values():
            await store.aclose()
        self._stores.clear()


class _Fields:
    """The headers of a request to the decision service, read in one pass: every value of
    the ones the decision reads itself (``_WATCHED``), the credential headers sent (name
    and value, in order), and the others (with ``X-Request-Id``, the credential headers
    and the method overrides) in order, for the original request."""

    __slots__ = ("credentials", "found", "kept", "override")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]], decider: _Decider) -> None:
        watched, named = decider.watched, decider.credentials
        found: dict[bytes, list[bytes]] = {}
        credentials: list[tuple[bytes, bytes]] = []
        kept: list[tuple[bytes, bytes]] = []
        for header in headers:
            name = header[0]
            if name in watched:
                if name in named:
                    credentials.append((name, header[1]))
                values = found.get(name)
                if values is None:
                    found[name] = [header[1]]
                else:
                    values.append(header[1])
                if name in _EDGE_ONLY:
                    continue
            kept.append(header)
        self.found = found
        self.credentials = credentials
        self.kept = kept
        #: The first method-override header's spelling in errors (None: none was sent).
        self.override: str | None = None
        if found and not found.keys().isdisjoint(_OVERRIDES):
            self.override = next(_OVERRIDES[k] for k, _ in headers if k in _OVERRIDES)

    def key(self, address: str) -> _Key | None:
        """What decides the request's plan (Rule 7), with the client's ``address``; None:
        one never kept (a method-override header, the original method or URI not sent
        exactly once, or more than ``_KEY_BYTES`` of them and credentials)."""
        method, uri = self.found.get(_ORIGINAL_METHOD), self.found.get(_ORIGINAL_URI)
        if self.override is not None or method is None or uri is None:
            return None
        if len(method) != 1 or len(uri) != 1:
            return None
        size = len(method[0]) + len(uri[0])
        for _, value in self.credentials:
            size += len(value)
        if size > _KEY_BYTES:
            return None
        return (method[0], uri[0], address, *self.credentials)

    def all(self, name: bytes) -> list[bytes]:
        return self.found.get(name, [])

    def first(self, name: bytes) -> bytes | None:
        values = self.found.get(name)
        return None if values is None else values[0]


def _edge(scope: Scope, fields: _Fields) -> str | None:
    """The edge mode the request asks for (Rule 4).

    ``?edge=`` is the edge's own configuration: an unknown value is the operator's typo,
    refused. ``X-Surefoot-Edge`` is read only without it, and an unknown value is ignored:
    an edge that forwards the client's headers must not let a client break its decisions.
    """
    query = bytes(scope.get("query_string", b""))
    # An edge's query is short and always the same; a long one (anyone's) is not kept.
    named, wrong = _named_edge(query) if len(query) <= 256 else _named_edge.__wrapped__(query)
    if wrong is not None:
        raise BadRequest(reason=wrong)
    if named is not None:
        return named
    for value in fields.all(_EDGE_HEADER):
        given = bytes(value).strip().lower().decode("latin-1")
        if given in _EDGES:
            return given
    return None


@lru_cache(maxsize=64)
def _named_edge(query: bytes) -> tuple[str | None, str | None]:
    """The edge mode a query string names (the edge's own, one per deployment; None: it
    names none), and why it is refused (an unknown mode, or several; None: it is not)."""
    pairs = parse_qsl(query.decode("latin-1"))
    named = [v.strip().lower() for k, v in pairs if k == "edge"]
    if not named:
        return None, None
    if any(edge not in _EDGES for edge in named) or len(set(named)) > 1:
        return None, f"unknown edge mode {named[0]!r} in ?edge= (expected 'nginx')"
    return named[0], None


def _one(fields: _Fields, name: bytes, label: str) -> bytes:
    values = fields.all(name)
    if not values or not values[0].strip():
        raise BadRequest(reason=f"the {label} header is missing")
    if len(values) > 1:
        raise BadRequest(reason=f"the {label} header was sent more than once")
    return bytes(values[0]).strip()


def _checked(decider: _Decider, scope: Scope, fields: _Fields, rid: str, address: str) -> Scope:
    """The request the edge describes, canonical, its credentials unambiguous (Rules 2
    and 3).

    Raises:
        SurefootError: the refusal to answer with, before any counting.
    """
    original = _original(scope, fields, rid, address)
    allow_override = decider.config.root.server.allow_method_override
    raw_path = original["raw_path"]
    refused = canonicalize(original, allow_method_override=allow_override)
    if refused is not None:
        raise refused
    if original["raw_path"] != raw_path:
        raise InvalidPath(reason="the path is not in canonical form: the edge forwards it as sent")
    if not allow_override and fields.override is not None:
        raise BadRequest(
            reason=f"the {fields.override} header is not allowed: the upstream never sees it"
        )
    decider.identity.credentials(original)  # as the gateway, before counting
    return original


def _original(scope: Scope, fields: _Fields, rid: str, address: str) -> Scope:
    """The scope of the request the edge describes (Rule 3), from ``address`` (Rule 1)."""
    method = _one(fields, _ORIGINAL_METHOD, "X-Original-Method")
    if not _TOKEN.fullmatch(method):
        raise BadRequest(reason="the X-Original-Method header is not a method")
    target = _one(fields, _ORIGINAL_URI, "X-Original-URI")
    absolute = None if target.startswith(b"/") else _ABSOLUTE.match(target)
    if absolute is not None:  # absolute-form (RFC 9112 section 3.2.2): its path and query
        target = target[absolute.end() :] or b"/"
        if target.startswith(b"?"):
            target = b"/" + target
    if not target.startswith(b"/"):
        raise InvalidPath(reason="the X-Original-URI header is not a path")
    raw_path, _, query = target.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    method_name = method.decode("ascii")
    return _scope(scope, fields, rid, address, method_name, _decoded(raw_path), raw_path, query)


def _scope(
    scope: Scope,
    fields: _Fields,
    rid: str,
    address: str,
    method: str,
    path: str,
    raw_path: bytes,
    query: bytes,
) -> Scope:
    return {
        "type": "http",
        "asgi": scope.get("asgi", {"version": "3.0"}),
        "http_version": scope.get("http_version", "1.1"),
        "scheme": scope.get("scheme", "http"),
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": fields.kept,
        "client": (address, 0),
        "server": scope.get("server"),
        "state": {"request_id": rid},
        _DESCRIBED: True,
    }


def _decoded(raw_path: bytes) -> str:
    """``raw_path`` percent-decoded, as ASGI servers fill ``path``."""
    if b"%" not in raw_path:
        return raw_path.decode("utf-8", "replace")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


def _client_address(scope: Scope, fields: _Fields, identity: Identity, *, trusted: bool) -> str:
    """The client's address (Rule 1)."""
    peer = scope.get("client")
    if trusted:
        chain = _forwarded_for(fields) if identity.forwarded_header == "forwarded" else []
        if chain:
            address = _address(chain[-1])
        else:  # X-Forwarded-For, or Forwarded absent: what HAProxy writes
            address = _last_forwarded(b",".join(fields.all(b"x-forwarded-for")))
        if address is not None:
            return address
        real = fields.all(_REAL_IP)
        if real:
            address = _address(real[-1].decode("latin-1").strip())
            if address is not None:
                return address
    return str(peer[0]) if peer else "unknown"


@lru_cache(maxsize=_REMEMBERED)
def _last_forwarded(xff: bytes) -> str | None:
    """The last address of an ``X-Forwarded-For`` chain (None: none, or not an address)."""
    chain = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
    return _address(chain[-1]) if chain else None


def _forwarded_for(fields: _Fields) -> list[str]:
    forwarded = b",".join(fields.all(b"forwarded"))
    chain = []
    for element in forwarded.decode("latin-1").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                chain.append(value.strip().strip('"'))
    return chain


@lru_cache(maxsize=_REMEMBERED)
def _address(text: str) -> str | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` or ``2001:db8::1``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


#: The fields of every allowed decision, before its request id and rate-limit fields.
_ALLOWED_HEAD = (b"content-length", b"0")
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}
#: Releases of concurrency slots under way (as ``RateLimitMiddleware``'s): kept referenced.
_releasing: set[asyncio.Task[None]] = set()


async def _allowed(send: Send, rid: str, fields: Sequence[tuple[bytes, bytes]]) -> None:
    """The allowed decision: 200, empty, with the rate limiter's fields."""
    headers = [_ALLOWED_HEAD, (b"x-request-id", rid.encode()), *fields]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send(_EMPTY_BODY)


async def _allow(scope: Scope, receive: Receive, send: Send) -> None:
    """The middleware's app (``decide`` asks its rate limiter directly and never calls it):
    the request is allowed (the middleware adds its fields)."""
    await _allowed(send, scope["state"]["request_id"], ())


class _EdgeIdentity(Identity):
    """The gateway's ``Identity``, remembering its answers about addresses (at most
    ``_REMEMBERED`` of each, then it starts again): every decision asks whether its peer
    is trusted and, through the rate limiter, what its client's address is, and parsing
    an address is a good part of a decision's cost.

    Only answers that depend on the address alone are remembered: ``is_trusted``, and
    ``client_address`` of a scope ``_original`` built (no forwarding header in it).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._trust: dict[str, bool] = {}
        self._addresses: dict[str, str] = {}

    def is_trusted(self, host: str) -> bool:
        known = self._trust.get(host)
        if known is None:
            known = _keep(self._trust, host, super().is_trusted(host))
        return known

    def client_address(self, scope: Scope) -> str:
        client = scope.get("client")
        if not client or not scope.get(_DESCRIBED):
            return super().client_address(scope)
        host = client[0]
        known = self._addresses.get(host)
        if known is None:
            alone = {"type": "http", "client": (host, 0), "headers": []}
            known = _keep(self._addresses, host, super().client_address(alone))
        return known


def _keep(memo: dict[K, V], key: K, value: V) -> V:
    """``value`` kept in ``memo`` under ``key``, at most ``_REMEMBERED`` of them (then
    ``memo`` starts again)."""
    if len(memo) >= _REMEMBERED:
        memo.clear()
    memo[key] = value
    return value


class _NginxSend:
    """Sends a refusal as NGINX's ``auth_request`` can take it (Rule 4)."""

    __slots__ = ("body", "send", "start")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if 200 <= message["status"] < 300:
                await self.send(message)
            else:
                self.start = message
            return
        if self.start is None:
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        start, self.start = self.start, None
        try:
            problem = json.dumps(json.loads(self.body), ensure_ascii=True, separators=(",", ":"))
        except ValueError:  # never expected: every refusal is a problem document
            problem = "{}"
        headers = [
            *((k, v) for k, v in start.get("headers", ()) if k != b"content-length"),
            (b"content-length", str(len(self.body)).encode()),
            (b"surefoot-status", str(start["status"]).encode()),
            (b"surefoot-problem", problem.encode("ascii")),
        ]
        await self.send({"type": "http.response.start", "status": 403, "headers": headers})
        await self.send({"type": "http.response.body", "body": self.body})


async def _json(send: Send, status: int, document: dict[str, Any], rid: str) -> None:
    body = json.dumps(document).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
