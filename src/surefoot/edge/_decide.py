"""``DecisionApp``: the decision service an edge proxy (NGINX, HAProxy) asks before it
forwards a request, with the gateway's policies, identity rules and store.

Per request to ``/decide`` (any method; the body is never read)::

    edge ─► /decide ─► the original request rebuilt from headers ─► canonicalize
             ─► credentials ─► RateLimitMiddleware ─► 200 empty (allowed)

The original request is described by ``X-Original-Method`` and ``X-Original-URI``
(the path and query as the client sent them); its credentials are the identity's
credential headers, forwarded by the edge as the client sent them. ``/healthz`` answers
200 while the process serves, ``/readyz`` 200 while the store answers.

Rule 1: the client's address is the TCP peer, unless the peer is one of
        ``[server] trusted_proxies`` (the edge): then it is the last address of the
        configured forwarding header (``X-Forwarded-For`` by default: what the edge wrote;
        with ``Forwarded`` configured and absent, ``X-Forwarded-For``, which HAProxy
        writes), else of ``X-Real-IP``, else the peer. From any other peer the forwarding headers
        are ignored, so a client cannot choose the address it is counted as.
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
from typing import Any
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
    CredentialsAmbiguous,
    InvalidPath,
    StoreUnavailable,
    SurefootError,
)
from surefoot.events import EventHook, LoggingHook
from surefoot.gateway import GatewayConfig, SharedOverrides, apply_overrides, load_config
from surefoot.identity import Identity
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy, RateLimitStore
from surefoot.storage import store_from_url

__all__ = ["DecisionApp"]

_log = logging.getLogger("surefoot.edge")
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
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")


@dataclass(frozen=True)
class _Decider:
    """What one configuration composes (Rule 5)."""

    config: GatewayConfig
    identity: Identity
    limiter: RateLimitMiddleware
    store_url: str


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
        identity = Identity(
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
            policies=self._overridden(config),
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
        return _Decider(config=config, identity=identity, limiter=limiter, store_url=url)

    def _overridden(self, config: GatewayConfig) -> list[RateLimitPolicy]:
        """The file's policies with the overrides in force applied (Rule 6)."""
        live = self.overrides.live.values()
        if not live:
            return list(config.rate_limit_policies)
        principals: dict[str, list[str]] = {client.name: [] for client in config.root.clients}
        for principal, name in config.principals.items():
            principals.setdefault(name, []).append(principal)
        return apply_overrides(config.rate_limit_policies, live, principals, now=self.clock.now())

    async def sync_overrides(self) -> None:
        """Read the temporary overrides and apply them if the set in force changed; a
        store that fails keeps those in force here."""
        try:
            changed = await self.overrides.sync()
        except Exception as exc:
            _log.warning("overrides: reading them failed: %s", type(exc).__name__)
            return
        if changed:
            self.apply_overrides()

    def apply_overrides(self) -> None:
        """Put the overrides in force on the rate limiter, in place (Rule 6)."""
        decider = self.decider
        try:
            decider.limiter.update_policies(self._overridden(decider.config))
        except ConfigurationError as exc:  # never expected: each override was checked
            _log.error("overrides: not applied, the file's limits stay: %s", exc)
            decider.limiter.update_policies(decider.config.rate_limit_policies)

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
        if self.overrides.next_expiry <= self.clock.now():  # an override ended (Rule 6)
            self.overrides.expire(self.clock.now())
            self.apply_overrides()
        decider = self.decider  # Rule 5: one configuration for the whole request
        identity = decider.identity
        peer = scope.get("client")
        trusted = peer is not None and identity.is_trusted(str(peer[0]))
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = adopt_request_id(scope, given if trusted else None)
        path = scope["path"]
        try:
            if path == "/decide":
                await self.decide(decider, scope, send, rid=rid, trusted=trusted)
            elif path == "/healthz":
                await _json(send, 200, {"status": "ok"}, rid)
            elif path == "/readyz":
                await self.ready(decider, send, rid)
            else:
                raise BadRequest(reason=f"no endpoint {path!r}: the decision service has /decide")
        except SurefootError as exc:
            await send_problem(send, exc, request_id=rid, base=DEFAULT_PROBLEM_BASE)

    async def decide(
        self, decider: _Decider, scope: Scope, send: Send, *, rid: str, trusted: bool
    ) -> None:
        """Answer one decision (Rules 1 to 4)."""
        if _edge(scope) == "nginx":
            send = _NginxSend(send)
        refused: SurefootError | None = None
        try:
            original = _original(scope, decider.identity, rid=rid, trusted=trusted)
        except SurefootError as exc:
            await send_problem(send, exc, request_id=rid, base=DEFAULT_PROBLEM_BASE)
            return
        allow_override = decider.config.root.server.allow_method_override
        raw_path = original["raw_path"]
        refused = canonicalize(original, allow_method_override=allow_override)
        if refused is None and original["raw_path"] != raw_path:
            refused = InvalidPath(
                reason="the path is not in canonical form: the edge forwards it as sent"
            )
        if refused is None and not allow_override:
            named = next((_OVERRIDES[k] for k, _ in scope["headers"] if k in _OVERRIDES), None)
            if named is not None:
                refused = BadRequest(
                    reason=f"the {named} header is not allowed: the upstream never sees it"
                )
        if refused is None:
            try:
                decider.identity.credentials(original)  # as the gateway, before counting
            except CredentialsAmbiguous as exc:
                refused = exc
        if refused is not None:
            await send_problem(send, refused, request_id=rid, base=DEFAULT_PROBLEM_BASE)
            return
        await decider.limiter(original, _nothing, send)

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


def _edge(scope: Scope) -> str | None:
    """The edge mode the request asks for (Rule 4).

    ``?edge=`` is the edge's own configuration: an unknown value is the operator's typo,
    refused. ``X-Surefoot-Edge`` is read only without it, and an unknown value is ignored:
    an edge that forwards the client's headers must not let a client break its decisions.
    """
    query = scope.get("query_string", b"").decode("latin-1")
    named = [v.strip().lower() for k, v in parse_qsl(query) if k == "edge"]
    if named:
        if any(edge not in _EDGES for edge in named) or len(set(named)) > 1:
            raise BadRequest(reason=f"unknown edge mode {named[0]!r} in ?edge= (expected 'nginx')")
        edge: str = named[0]
        return edge
    for name, value in scope["headers"]:
        given = bytes(value).strip().lower().decode("latin-1")
        if name == _EDGE_HEADER and given in _EDGES:
            return given
    return None


def _one(scope: Scope, name: bytes, label: str) -> bytes:
    values = [v for k, v in scope["headers"] if k == name]
    if not values or not values[0].strip():
        raise BadRequest(reason=f"the {label} header is missing")
    if len(values) > 1:
        raise BadRequest(reason=f"the {label} header was sent more than once")
    return bytes(values[0]).strip()


def _original(scope: Scope, identity: Identity, *, rid: str, trusted: bool) -> Scope:
    """The scope of the request the edge describes (Rules 1 and 3)."""
    method = _one(scope, _ORIGINAL_METHOD, "X-Original-Method")
    if not _TOKEN.fullmatch(method):
        raise BadRequest(reason="the X-Original-Method header is not a method")
    target = _one(scope, _ORIGINAL_URI, "X-Original-URI")
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:  # absolute-form (RFC 9112 section 3.2.2): its path and query
        target = target[absolute.end() :] or b"/"
        if target.startswith(b"?"):
            target = b"/" + target
    if not target.startswith(b"/"):
        raise InvalidPath(reason="the X-Original-URI header is not a path")
    raw_path, _, query = target.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    headers = [(k, v) for k, v in scope["headers"] if k not in _EDGE_ONLY]
    return {
        "type": "http",
        "asgi": scope.get("asgi", {"version": "3.0"}),
        "http_version": scope.get("http_version", "1.1"),
        "scheme": scope.get("scheme", "http"),
        "method": method.decode("ascii"),
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": (_client_address(scope, identity, trusted=trusted), 0),
        "server": scope.get("server"),
        "state": {"request_id": rid},
    }


def _client_address(scope: Scope, identity: Identity, *, trusted: bool) -> str:
    """The client's address (Rule 1)."""
    peer = scope.get("client")
    if not peer:
        return "unknown"
    if trusted:
        chain = _forwarded_for(scope) if identity.forwarded_header == "forwarded" else []
        if not chain:  # X-Forwarded-For, or Forwarded absent: what HAProxy writes
            xff = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
            chain = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
        real = [v.decode("latin-1").strip() for k, v in scope["headers"] if k == _REAL_IP]
        for candidate in (chain[-1:], real[-1:]):
            if candidate:
                address = _address(candidate[0])
                if address is not None:
                    return address
    return str(peer[0])


def _forwarded_for(scope: Scope) -> list[str]:
    forwarded = b",".join(v for k, v in scope["headers"] if k == b"forwarded")
    chain = []
    for element in forwarded.decode("latin-1").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                chain.append(value.strip().strip('"'))
    return chain


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


async def _allow(scope: Scope, receive: Receive, send: Send) -> None:
    """The terminal app: the request is allowed (the rate limiter adds its fields)."""
    rid = scope["state"]["request_id"].encode()
    headers = [(b"content-length", b"0"), (b"x-request-id", rid)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _nothing() -> Message:
    """The decision never reads a body."""
    return {"type": "http.request", "body": b"", "more_body": False}


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
