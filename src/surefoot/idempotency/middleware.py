"""``IdempotencyMiddleware``: pure ASGI, one ``_Responder`` per protected request.

Theory of operation, per request on a protected route and method:
1. Read the body (at most ``max_request_body`` bytes, else 413) and the key (header, or
   the policy's body field; malformed or ambiguous: 400; missing: 400, or pass through
   in rollout mode).
2. ``store.begin`` with the request's fingerprint and a fresh fencing token: one atomic
   step that reserves the scoped key or says why not (replay, 409, 422, or 429
   ``idempotency_records_exceeded`` when a new key would take the principal past the
   policy's ``max_records_per_principal`` or ``max_unknown_per_principal``).
3. If reserved, run the app with the buffered body, streaming its response to the client
   while keeping a copy of at most ``max_stored_response`` bytes.
4. Settle when the response's last chunk is ready (before it is sent, so a client that
   retries the instant it has the answer finds the key settled), or when the app returns
   or raises without finishing: complete (store the response), release (the status says
   no work was done), or apply the policy's ``on_server_error`` to a 5xx, an exception or
   an unfinished response. The settle is shielded from cancellation.
   A request cancelled before its response finished is the one exception: its handler
   may still be running (a thread outlives a cancelled task), so its reservation is
   left to the lease, as for a worker that died, and never released early.
5. A key left outcome unknown can be settled without an operator by an ``OutcomeResolver``
   (the gateway's lookup against its upstream): it is told of every key that becomes
   unknown (``remember``), and a request that finds its key unknown asks it first
   (``resolve``): a stored result is replayed, a release lets this request execute, and
   anything else answers ``idempotency_outcome_unknown`` as before. That 409 carries
   ``Retry-After: outcome_unknown_retry_after`` (the gateway passes its reconciler's
   interval): clients that retry at once (SDKs spend their few retries within seconds)
   are told when asking again can help. An inner app that answered without doing any
   work sets ``scope[NOT_EXECUTED]``; its reservation is released whatever the status.
6. Store outages go through a ``StoreHealth``: after a failure the store is down, and
   until a probe succeeds no request but the probe calls it. A ``begin`` that fails or is
   skipped follows the policy's ``on_store_error``: ``fail_closed`` (default) answers 503
   ``store_unavailable`` with ``Retry-After`` (until the next probe) and executes
   nothing; ``fail_open`` executes without protection and marks the response
   ``Idempotency-Status: unprotected``, except for a request that was already told its
   key is in flight (``wait``), which always fails closed. A ``finish`` that fails or is
   skipped never changes what the client gets: the reservation is left to its lease.
   The store's exception and its text never reach a client: the problem is built anew.

Every decision above that needs no I/O (the route's policy, the key, the fingerprint, what
a store's answer means, the outcome of a response, the events) is made by ``Exchange``,
with the configuration in ``IdempotencySettings``: the ASGI ``_Responder`` here and the
blocking twin in ``surefoot.wsgi`` only drive it, so both stacks follow one rule.

No guard timeout is added around store calls here (the rate limiter has one): the stores
time out on their own, and cutting a ``begin`` that may have reserved the key would leave
a reservation that ``on_lease_expiry="unknown"`` later reports for a request that never ran.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

from surefoot._asgi import (
    IDEMPOTENCY_POLICY,
    NOT_EXECUTED,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    canonicalize,
    request_id,
    route_method,
)
from surefoot._asgi import send_problem as _send_problem
from surefoot._health import (
    HealthChange,
    HealthState,
    Permit,
    StoreDown,
    StoreHealth,
    StoreRecovered,
    failure_name,
    health_event,
)
from surefoot._json import NOT_JSON, parse_json_body
from surefoot._routes import RouteTable, match_form
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    ClientError,
    ConfigurationError,
    IdempotencyKeyAmbiguous,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    IdempotencyRecordsExceeded,
    IdempotencyRequestInProgress,
    IdempotencyResponseNotStored,
    RequestBodyTooLarge,
    StoreCapacityExceeded,
    StoreUnavailable,
    SurefootError,
    problem_body,
)
from surefoot.events import EventHook, LoggingHook, emit, wanting
from surefoot.idempotency import _events as ev
from surefoot.idempotency._core import (
    Begin,
    Decision,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Replay,
    Reserved,
    Step,
    StoredResponse,
    Unknown,
    scoped_key,
)
from surefoot.idempotency._fingerprint import fingerprint
from surefoot.idempotency._key import InvalidKey, parse_key
from surefoot.idempotency._policy import IdempotencyPolicy
from surefoot.idempotency._store import IdempotencyStore
from surefoot.identity import Identity, PrincipalResolver, default_principal

__all__ = [
    "Exchange",
    "IdempotencyMiddleware",
    "IdempotencySettings",
    "OutcomeResolver",
    "Resolution",
]

MiB = 1024 * 1024
_REPLAYED = (b"idempotent-replayed", b"true")
_UNPROTECTED = (b"idempotency-status", b"unprotected")
_CONFLICT_RETRY_AFTER = 1
_STORE_RETRY_AFTER = 1
# Fencing tokens only need to be unique: a random per-process prefix and a counter.
_TOKEN_PREFIX = secrets.token_hex(8) + "-"
_TOKEN_COUNTER = itertools.count()
# The named tuples of every request, built without their own __new__ (a Python call that
# costs twice the building): _begin((fingerprint, token, lease, ttl, on_lease_expiry,
# max_records, max_unknown)), _stored((status, headers, body)), _outcome((step, response)).
_begin = partial(tuple.__new__, Begin)
_stored = partial(tuple.__new__, StoredResponse)
_outcome = partial(tuple.__new__, Outcome)
# Settle tasks shielded from a cancelled request; referenced here until they finish.
_settling: set[asyncio.Task[None]] = set()

#: What an ``OutcomeResolver`` found: the stored result to replay (it has already resolved
#: the key with it), ``"release"`` (the work did not happen; it has released the key), or
#: None (still unknown).
Resolution = StoredResponse | Literal["release"] | None


@runtime_checkable
class OutcomeResolver(Protocol):
    """Settles ``outcome unknown`` keys by asking the system that did (or did not) the work."""

    async def remember(self, scope: Scope, store_key: str, body: bytes) -> None:
        """``store_key`` just became outcome unknown after this request (``body``) failed."""
        ...

    async def resolve(self, scope: Scope, store_key: str, body: bytes) -> Resolution:
        """A retry (``scope``, ``body``) found ``store_key`` unknown: settle it if possible."""
        ...


class IdempotencySettings:
    """The configuration ``IdempotencyMiddleware`` (ASGI) and ``surefoot.wsgi``'s guard share,
    with the choice of a request's policy: one rule for both stacks (no I/O here)."""

    #: What the store must be, for the error message of a wrong one.
    _kind = "IdempotencyStore (begin, finish, resolve, forget, get, records, purge, aclose)"
    _name = "IdempotencyMiddleware"

    def __init__(
        self,
        *,
        store: Any,
        policy: IdempotencyPolicy | None = None,
        routes: Mapping[str, IdempotencyPolicy | None] | None = None,
        principal: PrincipalResolver = default_principal,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
        max_request_body: int = MiB,
        max_stored_response: int = MiB,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        store_health: StoreHealth | None = None,
        resolver: OutcomeResolver | None = None,
        outcome_unknown_retry_after: float = 5.0,
        allow_method_override: bool = False,
    ) -> None:
        if not self._accepts(store):
            raise ConfigurationError(
                f"{self._name}.store: expected an {self._kind}, got {type(store).__name__}"
            )
        if max_request_body < 0 or max_stored_response < 0:
            raise ConfigurationError(
                f"{self._name}: expected max_request_body and max_stored_response >= 0"
            )
        if store_health is not None and not isinstance(store_health, StoreHealth):
            raise ConfigurationError(
                f"{self._name}.store_health: expected a surefoot.storage.StoreHealth, "
                f"got {type(store_health).__name__}"
            )
        if not 0 < outcome_unknown_retry_after < math.inf:
            raise ConfigurationError(
                f"{self._name}.outcome_unknown_retry_after: expected seconds > 0, "
                f"got {outcome_unknown_retry_after!r}"
            )
        self.store = store
        self.health = store_health if store_health is not None else StoreHealth()
        self.policy = policy if policy is not None else IdempotencyPolicy()
        # A route left unprotected matches only its own spelling (_routes Rule 5).
        self.routes = RouteTable((routes or {}).items(), strict=lambda policy: policy is None)
        self.principal = principal
        # Quotas count an Identity's unknown credentials under their address (each costs
        # nothing to make up), while their keys stay scoped by the credential itself.
        self.owner = (
            principal.rate_limit_principal
            if isinstance(principal, Identity) and principal.lists_credentials
            else None
        )
        self.clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self.wants = wanting(self.hooks)
        self.max_request_body = max_request_body
        self.max_stored_response = max_stored_response
        self.problem_base = problem_base
        self.resolver = resolver
        # Retry-After is whole seconds: rounded up, so that a client is never early.
        self.unknown_retry_after = max(1, math.ceil(outcome_unknown_retry_after))
        self.allow_method_override = allow_method_override

    def _accepts(self, store: object) -> bool:
        return isinstance(store, IdempotencyStore)

    def select(
        self, scope: Scope
    ) -> tuple[IdempotencyPolicy, str | None, str] | SurefootError | None:
        """Canonicalise an HTTP scope and find its policy: (policy, route template, method),
        the error to answer without calling the app, or None when the request is not protected."""
        refused = canonicalize(scope, allow_method_override=self.allow_method_override)
        if refused is not None:
            return refused
        method = route_method(scope)
        policy, route = self.policy, None
        if len(self.routes):
            matched = self.routes.match(method, scope["path"])
            if matched is not None:
                route, policy_or_none = matched
                if policy_or_none is None:
                    return None
                policy = policy_or_none
        if method not in policy.methods:
            return None
        return policy, route, method


class IdempotencyMiddleware(IdempotencySettings):
    """Makes retried writes execute once and replay the same response.

    Example:
        >>> app = IdempotencyMiddleware(app, store=store_from_url("sqlite:///idempotency.db"))
        >>> app = IdempotencyMiddleware(
        ...     app,
        ...     store=store,
        ...     policy=IdempotencyPolicy(ttl=7 * 86400, lease=30),
        ...     routes={"POST /webhooks/*": IdempotencyPolicy(required=False), "/health": None},
        ... )

    Args:
        app: the ASGI app to protect.
        store: where records live (``MemoryStore``, ``SqliteStore``, ...).
        policy: the policy of every route not listed in ``routes``.
        routes: route templates (``"POST /v1/charges/{id}"``) mapped to their own policy,
            or to None to leave them unprotected; the first match wins.
        principal: who is calling (scopes keys); defaults to the hashed ``Authorization``
            or ``X-API-Key`` credential, else the client address. A resolver that raises
            a ``ClientError`` (``CredentialsAmbiguous`` from ``Identity``) refuses the
            request with that problem.
        clock: source of ``now``; ``sleep``: how to wait (tests inject ``ManualClock``).
        hooks: event hooks; default: one ``LoggingHook``.
        max_request_body: larger request bodies get 413 without executing.
        max_stored_response: larger responses are streamed but not kept for replay.
        problem_base: base URI of the problem ``type`` members.
        store_health: tracks the store's outages (default: a ``StoreHealth`` of its own).
            Pass one ``StoreHealth`` to this and to ``RateLimitMiddleware`` when they
            share a store, so that an outage one finds spares the other the wait.
        resolver: settles outcome-unknown keys on a retry (see ``OutcomeResolver``).
        outcome_unknown_retry_after: seconds a retry that finds its key's outcome unknown
            is told to wait (``Retry-After`` of the 409 ``idempotency_outcome_unknown``,
            rounded up); about how often something settles such keys (a reconciler's
            interval). Default: 5.
        allow_method_override: keep the ``X-HTTP-Method-Override``, ``X-Method-Override``
            and ``X-HTTP-Method`` headers (the app honours them), and match a POST's routes
            and methods on the method they name; by default they are removed before the
            app sees them.

    The path is made canonical before any route is matched, and the app gets that form; a
    path that cannot be is refused (400 ``invalid_path``) without calling the app
    (``docs/idempotency.md``, "Paths").
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore,
        policy: IdempotencyPolicy | None = None,
        routes: Mapping[str, IdempotencyPolicy | None] | None = None,
        principal: PrincipalResolver = default_principal,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hooks: Sequence[EventHook] | None = None,
        max_request_body: int = MiB,
        max_stored_response: int = MiB,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        store_health: StoreHealth | None = None,
        resolver: OutcomeResolver | None = None,
        outcome_unknown_retry_after: float = 5.0,
        allow_method_override: bool = False,
    ) -> None:
        super().__init__(
            store=store,
            policy=policy,
            routes=routes,
            principal=principal,
            clock=clock,
            hooks=hooks,
            max_request_body=max_request_body,
            max_stored_response=max_stored_response,
            problem_base=problem_base,
            store_health=store_health,
            resolver=resolver,
            outcome_unknown_retry_after=outcome_unknown_retry_after,
            allow_method_override=allow_method_override,
        )
        self.app = app
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        selected = self.select(scope)
        if selected is None:
            await self.app(scope, receive, send)
        elif isinstance(selected, SurefootError):
            await _send_problem(
                send, selected, request_id=request_id(scope), base=self.problem_base
            )
        else:
            policy, route, method = selected
            await _Responder(self, policy, route, method, scope, receive, send).run()


class Exchange:
    """The per-request state of one protected request, and every decision about it that
    needs no I/O: the ASGI ``_Responder`` and ``surefoot.wsgi``'s sync twin drive it, so the
    key, the fingerprint, the answers, the events and the settle are one rule for both."""

    __slots__ = (
        "body",
        "chunks",
        "complete",
        "headers",
        "method",
        "mw",
        "overflow",
        "owner",
        "parsed",
        "path",
        "policy",
        "principal",
        "route",
        "scope",
        "settled",
        "size",
        "status",
        "store_key",
        "token",
    )

    def __init__(
        self,
        mw: IdempotencySettings,
        policy: IdempotencyPolicy,
        route: str | None,
        method: str,
        scope: Scope,
    ) -> None:
        self.mw = mw
        self.policy = policy
        self.route = route
        self.scope = scope
        self.method = method
        self.path: str = scope["path"]
        self.principal = ""  # resolved by identify(), where a refusal can be answered
        self.owner: str | None = None  # whose quota a new record counts against
        self.store_key: str | None = None
        self.body = b""
        self.parsed: Any = NOT_JSON
        # What the app sent, for the settle.
        self.status: int | None = None
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.complete = False
        self.token = ""
        self.settled = False

    # -- events --------------------------------------------------------------------------

    @property
    def request_id(self) -> str:
        return request_id(self.scope)

    def emit(self, cls: type[ev.IdempotencyEvent], **fields: Any) -> None:
        if self.mw.wants(cls):
            self.event(cls, **fields)

    def event(self, cls: type[ev.IdempotencyEvent], **fields: Any) -> None:
        """Build and emit the event; on the hot path, after asking ``wants`` (which
        ``emit`` does) without building the fields first."""
        event = cls(
            at=self.mw.clock.now(),
            request_id=self.request_id,
            method=self.method,
            path=self.path,
            principal=self.principal,
            store_key=self.store_key,
            **fields,
        )
        emit(self.mw.hooks, event)

    def report(self, change: HealthChange | None, failure: Exception | None) -> None:
        """Emit the one event of an outage's start or end."""
        if change is None:
            return
        cls = StoreDown if change.state is HealthState.DOWN else StoreRecovered
        if self.mw.wants(cls):
            event = health_event(
                change,
                at=self.mw.clock.now(),
                request_id=self.request_id,
                store=self.mw.store,
                layer="idempotency",
                error="" if failure is None else failure_name(failure),
            )
            emit(self.mw.hooks, event)

    # -- the request ---------------------------------------------------------------------

    def identify(self) -> ClientError | None:
        """Resolve the principal (and the quota's owner); the refusal of ambiguous
        credentials, since no key is scoped by a guess."""
        try:
            self.principal = self.mw.principal(self.scope)
            if self.mw.owner is not None:
                self.owner = self.mw.owner(self.scope)
        except ClientError as exc:
            return exc
        return None

    def scan(self) -> tuple[list[bytes], bytes | None]:
        """One pass over the headers: the key header's values and the content type.

        Raises:
            RequestBodyTooLarge: the declared length is over ``max_request_body``.
        """
        key_header = self.policy.header_name
        keys: list[bytes] = []
        length = content_type = None
        for name, value in self.scope["headers"]:
            if name == key_header:
                keys.append(value)
            elif name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
        if length is not None and length.isdigit() and int(length) > self.mw.max_request_body:
            raise RequestBodyTooLarge(limit=self.mw.max_request_body)
        return keys, content_type

    def refused(self, exc: SurefootError) -> SurefootError:
        """Note a request refused for its body or key; returns the problem to answer."""
        if not isinstance(exc, RequestBodyTooLarge):
            self.emit(ev.KeyInvalid, reason=exc.code)
        return exc

    def read_key(self, values: list[bytes], content_type: bytes | None) -> str | None:
        header = self.policy.header
        try:
            key = parse_key(values)
        except InvalidKey as exc:
            raise IdempotencyKeyInvalid(header=header, reason=exc.reason) from None
        self.parsed = parse_json_body(self.body, content_type)
        field = self.policy.body_field
        if field is not None and isinstance(self.parsed, dict):
            value = self.parsed.get(field)
            if value is not None:
                try:
                    body_key = parse_key([str(value).encode("latin-1", "replace")])
                except InvalidKey as exc:
                    raise IdempotencyKeyInvalid(
                        header=f"body field '{field}'", reason=exc.reason
                    ) from None
                if key is not None and key != body_key:
                    raise IdempotencyKeyAmbiguous(header=header, field=field)
                key = body_key
        return key

    def missing_key(self) -> SurefootError | None:
        """A request without a key: the problem to answer, or None to run the app as is."""
        if not self.policy.required:
            return None
        self.emit(ev.KeyMissing, rejected=not self.policy.rollout)
        if self.policy.rollout:
            return None
        return IdempotencyKeyMissing(method=self.method, path=self.path, header=self.policy.header)

    def keyed(self, key: str) -> None:
        """Scope ``key`` by principal (and route, if the policy says so)."""
        route = (
            f"{self.method} {self.route or match_form(self.path)}"
            if self.policy.scope == "principal_route"
            else None
        )
        self.store_key = scoped_key(self.principal, key, route, owner=self.owner)

    def begin_request(self) -> Begin:
        """What ``store.begin`` is asked: the fingerprint and a fresh fencing token."""
        query = self.scope.get("query_string", b"")
        target = self.scope.get("raw_path") or self.path.encode()
        if query:
            target += b"?" + query
        policy = self.policy
        return _begin(
            (
                fingerprint(self.method, target, self.body, self.parsed, policy.ignore_paths),
                f"{_TOKEN_PREFIX}{next(_TOKEN_COUNTER):x}",  # token
                policy.lease,
                policy.ttl,
                policy.on_lease_expiry,
                policy.max_records_per_principal or 0,  # max_records
                policy.max_unknown_per_principal or 0,  # max_unknown
            )
        )

    # -- the store's answer to begin ---------------------------------------------------------

    def begin_full(self, permit: Permit, exc: StoreCapacityExceeded) -> SurefootError:
        """The store answered that it is full (not an outage): the problem to answer."""
        # Its retry_after says when a place frees up; nothing else of it reaches the client.
        self.report(self.mw.health.succeeded(permit, self.mw.clock.now()), None)
        self.emit(
            ev.StoreFailed, phase="begin", action="fail_closed", error="StoreCapacityExceeded"
        )
        retry_after = exc.fields.get("retry_after", _STORE_RETRY_AFTER)
        return StoreCapacityExceeded(retry_after=retry_after)

    def begin_answered(self, permit: Permit) -> None:
        if permit.probe:
            self.report(self.mw.health.succeeded(permit, self.mw.clock.now()), None)

    def begin_failed(self, permit: Permit, exc: Exception) -> None:
        self.report(self.mw.health.failed(permit, self.mw.clock.now()), exc)

    def store_down(self, failure: Exception | None, *, first: bool) -> SurefootError | None:
        """While the store is down: the 503 to answer, or None to execute unprotected
        (``fail_open``). ``failure`` is this request's failed call, None when the store
        was not called."""
        # A request the store already told "in flight" (first=False, waiting) must not run
        # beside the original, whatever the route says.
        action = self.policy.on_store_error if first else "fail_closed"
        if failure is None:
            self.emit(ev.StoreBypassed, phase="begin", action=action)
        else:
            self.emit(ev.StoreFailed, phase="begin", action=action, error=failure_name(failure))
        if action == "fail_open":
            reason = "store_down" if failure is None else "store_failed"
            self.emit(ev.ExecutedUnprotected, reason=reason)
            return None
        # A fresh error: what the store raised, and its text, stay in the logs.
        wait = self.mw.health.retry_after(self.mw.clock.now())
        return StoreUnavailable(retry_after=max(1, math.ceil(wait)))

    def answer(self, decision: Decision, *, waited: float) -> str | StoredResponse | SurefootError:
        """What to do with the store's decision: execute (the fencing token), replay the
        stored response, or answer a problem."""
        if isinstance(decision, Reserved):
            if self.mw.wants(ev.KeyReserved):
                self.event(
                    ev.KeyReserved, generation=decision.generation, took_over=decision.took_over
                )
            if decision.took_over:
                self.emit(ev.LeaseExpired, action="reexecute")
            self.scope[IDEMPOTENCY_POLICY] = self.policy
            self.token = decision.token
            return decision.token
        if isinstance(decision, Replay):
            if self.mw.wants(ev.ResponseReplayed):
                self.event(ev.ResponseReplayed, status=decision.response.status)
            return decision.response
        if isinstance(decision, InProgress):
            self.emit(ev.RequestInProgress, waited=waited)
            return IdempotencyRequestInProgress(retry_after=_CONFLICT_RETRY_AFTER)
        if isinstance(decision, Mismatch):
            self.emit(ev.KeyReused)
            return IdempotencyKeyReused()
        if isinstance(decision, NotStored):
            self.emit(ev.ResponseReplayed, status=decision.status)
            return IdempotencyResponseNotStored(original_status=decision.status)
        if isinstance(decision, OverQuota):
            self.emit(ev.RecordsExceeded, kind=decision.kind, limit=decision.limit)
            kind = "in all" if decision.kind == "records" else "of unknown outcome"
            wait = max(1, math.ceil(decision.retry_after))
            return IdempotencyRecordsExceeded(limit=decision.limit, kind=kind, retry_after=wait)
        assert isinstance(decision, Unknown)
        if decision.lease_expired_now:
            self.emit(ev.LeaseExpired, action="unknown")
        reason = "lease_expired" if decision.lease_expired_now else "pending"
        self.emit(ev.OutcomeUnknown, reason=reason)
        return IdempotencyOutcomeUnknown(retry_after=self.mw.unknown_retry_after)

    # -- the response, and the settle ------------------------------------------------------

    def started(self, status: int, headers: Sequence[Sequence[bytes]]) -> None:
        """The app's response began."""
        self.status = status
        self.headers = tuple(map(tuple, headers))  # type: ignore[arg-type]

    def captured(self, chunk: bytes) -> None:
        """Keep a copy of ``chunk`` while the response fits ``max_stored_response``."""
        if not self.overflow:
            self.size += len(chunk)
            if self.size > self.mw.max_stored_response:
                self.overflow = True
                self.chunks.clear()
            else:
                self.chunks.append(chunk)

    def outcome(self) -> Outcome:
        """How to settle: by the finished response's status, else by ``on_server_error``."""
        status = self.status
        if self.scope.get(NOT_EXECUTED):
            return Outcome(Step.RELEASE)
        if self.complete and status is not None:
            if status in self.policy.release_statuses:
                return Outcome(Step.RELEASE)
            if status < 500:
                body = None if self.overflow else b"".join(self.chunks)
                return _outcome((Step.COMPLETE, _stored((status, self.headers, body))))
        mode = self.policy.on_server_error
        if mode == "release":
            return Outcome(Step.RELEASE)
        if mode == "unknown":
            return Outcome(Step.MARK_UNKNOWN)
        if self.complete and status is not None:
            body = None if self.overflow else b"".join(self.chunks)
            return Outcome(Step.COMPLETE, StoredResponse(status, self.headers, body))
        error = SurefootError()
        stored_body = problem_body(error, request_id=self.request_id, base=self.mw.problem_base)
        headers = (
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(stored_body)).encode()),
        )
        return Outcome(Step.COMPLETE, StoredResponse(error.status, headers, stored_body))

    def finish_failed(self, permit: Permit, exc: Exception) -> None:
        """``store.finish`` failed: the reservation is left to its lease."""
        # The client has the handler's response (or its exception) already, and
        # on_lease_expiry decides what a retry meets after the lease.
        if permit.call:
            self.report(self.mw.health.failed(permit, self.mw.clock.now()), exc)
        self.emit(ev.StoreFailed, phase="finish", action="left_to_lease", error=failure_name(exc))
        self.settled = True

    def finished(self, permit: Permit, outcome: Outcome, accepted: bool) -> bool:
        """``store.finish`` answered; True when the key was just left outcome unknown."""
        if permit.probe:
            self.report(self.mw.health.succeeded(permit, self.mw.clock.now()), None)
        self.settled = True
        if not accepted:
            self.emit(ev.StaleFinish, status=self.status)
        elif outcome.step is Step.COMPLETE:
            assert outcome.response is not None
            if self.mw.wants(ev.ResponseStored):
                self.event(
                    ev.ResponseStored,
                    status=outcome.response.status,
                    body_stored=outcome.response.body is not None,
                )
        elif outcome.step is Step.RELEASE:
            self.emit(ev.ReservationReleased, status=self.status if self.complete else None)
        else:
            self.emit(ev.OutcomeUnknown, reason="server_error")
            return True
        return False


class _Responder(Exchange):
    """One protected ASGI request: the ``Exchange`` driven with ASGI's receive and send."""

    __slots__ = ("app", "receive", "replayed_body", "send", "sleep")

    def __init__(
        self,
        mw: IdempotencyMiddleware,
        policy: IdempotencyPolicy,
        route: str | None,
        method: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        super().__init__(mw, policy, route, method, scope)
        self.app = mw.app
        self.sleep = mw.sleep
        self.receive = receive
        self.send = send
        self.replayed_body = False

    async def problem(self, error: SurefootError) -> None:
        await _send_problem(self.send, error, request_id=self.request_id, base=self.mw.problem_base)

    async def run(self) -> None:
        refused = self.identify()
        if refused is not None:
            await self.problem(refused)
            return
        try:
            keys, content_type = self.scan()
            if not await self.read_body():
                return  # the client went away before sending its body: nothing to do
            key = self.read_key(keys, content_type)
        except (RequestBodyTooLarge, IdempotencyKeyInvalid, IdempotencyKeyAmbiguous) as exc:
            await self.problem(self.refused(exc))
            return
        if key is None:
            missing = self.missing_key()
            if missing is None:
                await self.app(self.scope, self.replay_receive, self.send)
            else:
                await self.problem(missing)
            return
        self.keyed(key)
        await self.decide()

    async def read_body(self) -> bool:
        limit = self.mw.max_request_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestBodyTooLarge(limit=limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return True

    async def decide(self) -> None:
        request = self.begin_request()
        clock = self.mw.clock
        started = clock.now()
        decision = await self.begin(request, started, first=True)
        if decision is None:
            return
        waited = 0.0
        if isinstance(decision, InProgress) and self.policy.wait > 0:
            deadline = started + self.policy.wait
            pause = 0.05
            while isinstance(decision, InProgress):
                now = clock.now()
                if now >= deadline:
                    break
                await self.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 1.0)
                decision = await self.begin(request, clock.now(), first=False)
                if decision is None:
                    return
            waited = clock.now() - started
        if isinstance(decision, Unknown) and self.mw.resolver is not None:
            resolved = await self.resolve_unknown(decision, request)
            if resolved is None:
                return
            decision = resolved
        await self.act(self.answer(decision, waited=waited))

    async def resolve_unknown(self, unknown: Unknown, request: Begin) -> Decision | None:
        """Ask the resolver; None when this request was answered, else what to answer."""
        assert self.store_key is not None
        assert self.mw.resolver is not None
        try:
            resolution = await self.mw.resolver.resolve(self.scope, self.store_key, self.body)
        except Exception as exc:
            self.emit(ev.StoreFailed, phase="resolve", action="unknown", error=failure_name(exc))
            return unknown
        if resolution is None:
            return unknown
        if resolution == "release":
            # Another retry may have taken the released key meanwhile: answer what it is now,
            # never resolving twice (a key unknown again stays unknown).
            return await self.begin(request, self.mw.clock.now(), first=True)
        self.emit(ev.ResponseReplayed, status=resolution.status)
        await self.replay(resolution)
        return None

    async def begin(self, request: Begin, now: float, *, first: bool) -> Decision | None:
        """The store's decision, or None when the request was answered without one."""
        assert self.store_key is not None
        health = self.mw.health
        permit = health.permit(now)
        if not permit.call:
            await self.unavailable(None, first=first)
            return None
        failure: Exception | None = None
        try:
            decision: Decision = await self.mw.store.begin(self.store_key, request, now)
        except StoreCapacityExceeded as exc:
            await self.problem(self.begin_full(permit, exc))
            return None
        except Exception as exc:  # StoreUnavailable, or a driver error the store let through
            self.begin_failed(permit, exc)
            failure = exc
        except BaseException:
            health.abandoned(permit, self.mw.clock.now())
            raise
        if failure is not None:
            await self.unavailable(failure, first=first)
            return None
        self.begin_answered(permit)
        return decision

    async def unavailable(self, failure: Exception | None, *, first: bool) -> None:
        """Answer while the store is down: 503, or execute unprotected (``fail_open``)."""
        error = self.store_down(failure, first=first)
        if error is None:
            await self.app(self.scope, self.replay_receive, self.unprotected_send)
        else:
            await self.problem(error)

    async def unprotected_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), _UNPROTECTED]}
        await self.send(message)

    async def act(self, answer: str | StoredResponse | SurefootError) -> None:
        if isinstance(answer, str):
            await self.execute()
        elif isinstance(answer, SurefootError):
            await self.problem(answer)
        else:
            await self.replay(answer)

    async def replay(self, response: StoredResponse) -> None:
        headers = [*response.headers, _REPLAYED]
        await self.send(
            {"type": "http.response.start", "status": response.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": response.body or b""})

    # -- executing and settling ------------------------------------------------------------

    async def replay_receive(self) -> Message:
        """The app's receive: the buffered body once, then what the client sends."""
        if not self.replayed_body:
            self.replayed_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return await self.receive()

    async def capture_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started(message["status"], message.get("headers", ()))
        elif kind == "http.response.body":
            self.captured(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
                # Settled before the client has the last byte: a retry sent the instant the
                # answer arrives finds the record settled, never still in flight.
                await self.settle()
        await self.send(message)

    async def execute(self) -> None:
        try:
            await self.app(self.scope, self.replay_receive, self.capture_send)
        except Exception:
            await _shielded(self.settle())
            raise
        except BaseException:
            # Cancelled before the response finished: the handler may still be working (in
            # a thread, or a task it started), so releasing the key could run it twice.
            # The reservation is left to its lease, exactly like a worker that died.
            if self.complete:
                await _shielded(self.settle())
            else:
                self.emit(ev.ReservationAbandoned)
            raise
        try:
            await self.settle()  # at once if capture_send settled before the last chunk
        except asyncio.CancelledError:
            # Cancelled while the store was busy: a settle with the same token is safe to
            # repeat (a second finish of a settled record is refused), so finish it shielded.
            await _shielded(self.settle())
            raise

    async def settle(self) -> None:
        """Settle the reservation, unless that is done already."""
        if self.settled:
            return
        assert self.store_key is not None
        outcome = self.outcome()
        health = self.mw.health
        now = self.mw.clock.now()
        # A reservation this request holds is always settled in the store, even while
        # the tracker believes the store is down: skipping it would lose the response
        # (and, with on_lease_expiry="reexecute", run the request again) after a blip
        # that other requests saw. Only a call the tracker permitted reports to it.
        permit = health.permit(now)
        try:
            accepted = await self.mw.store.finish(self.store_key, self.token, outcome, now)
        except Exception as exc:
            self.finish_failed(permit, exc)
            return
        except BaseException:
            if permit.call:
                health.abandoned(permit, self.mw.clock.now())
            raise
        unknown = self.finished(permit, outcome, accepted)
        if unknown and self.mw.resolver is not None:
            try:
                await self.mw.resolver.remember(self.scope, self.store_key, self.body)
            except Exception as exc:
                self.emit(
                    ev.StoreFailed, phase="remember", action="unknown", error=failure_name(exc)
                )


async def _shielded(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    _settling.add(task)
    task.add_done_callback(_settling.discard)
    await asyncio.shield(task)
