"""``IdempotencyPolicy``: what the middleware does for one route, as an immutable value."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from surefoot.errors import ConfigurationError

__all__ = ["IdempotencyPolicy"]

_MIN_TTL = 60.0
_MAX_TTL = 90 * 86400.0
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, kw_only=True)
class IdempotencyPolicy:
    """How requests on a route are made idempotent.

    Example:
        >>> IdempotencyPolicy(ttl=7 * 86400, lease=30, ignore_fields=("metadata.trace_id",))
        IdempotencyPolicy(methods=frozenset(...), ...)

    Args:
        methods: HTTP methods that need a key. Others pass through untouched.
        required: a request without a key gets 400 ``idempotency_key_missing``.
        rollout: with ``required``, let keyless requests through unprotected but emit a
            ``KeyMissing`` event for each, to find the clients that still send none.
        ttl: seconds a completed record is kept for replay (1 minute to 90 days).
        scope: ``"principal"`` (a key is unique per client) or ``"principal_route"``
            (per client and per method + path).
        ignore_fields: JSON body fields (dotted paths) left out of the fingerprint,
            such as a client timestamp.
        lease: seconds a reservation is held before it counts as abandoned (a worker died).
        on_lease_expiry: after an abandoned reservation, ``"reexecute"`` runs the next
            retry (the handler is safe to re-run) or ``"unknown"`` answers
            ``idempotency_outcome_unknown`` until an operator resolves the key.
        on_server_error: after a 5xx or an exception, when the work may have happened:
            ``"release"`` lets a retry run (the handler's transaction rolled back),
            ``"store"`` replays the failure, ``"unknown"`` holds the key as outcome unknown.
        release_statuses: statuses that certainly did no work and release the key.
        wait: seconds a duplicate waits for an in-flight original before answering
            409 ``idempotency_request_in_progress`` (0: answer at once).
        header: the request header carrying the key.
        body_field: a top-level JSON body field that may carry the key instead.
        on_store_error: while the store is down, ``"fail_closed"`` answers 503
            ``store_unavailable`` without executing; ``"fail_open"`` executes the request
            without idempotency protection, marks its response
            ``Idempotency-Status: unprotected`` and emits ``ExecutedUnprotected``.
        max_records_per_principal: live records (any state, until their TTL ends) one
            principal may hold; a new key beyond it gets 429
            ``idempotency_records_exceeded`` without executing, so that one client can
            never fill a store that others share. None (the default): no quota, since
            only the app knows whether its principals are many clients or one (every
            user behind one load balancer, identified by a cookie, is one address).
            The gateway sets 10,000.
        max_unknown_per_principal: of those, records of unknown outcome (each waits for
            an operator, a lookup or the TTL); a new key beyond it gets the same 429.
            None (the default): no quota. The gateway sets 1,000.

    Warning:
        ``on_server_error="release"`` re-executes a request whose handler failed after
        doing part of its work unless that work was rolled back. Use it only for
        transactional handlers.

    Warning:
        ``on_store_error="fail_open"`` executes a retry of a request that already ran, as
        often as the client retries during an outage: a retried payment is charged twice.
        Use it only where a duplicate is harmless or caught downstream.

    Warning:
        Without ``max_records_per_principal``, one client can fill a store that others
        share: a full ``MemoryStore`` then refuses every client's new keys, a disk store
        grows. Set the quotas where each principal is one client.
    """

    methods: frozenset[str] = frozenset({"POST", "PATCH"})
    required: bool = True
    rollout: bool = False
    ttl: float = 86400.0
    scope: Literal["principal", "principal_route"] = "principal"
    ignore_fields: tuple[str, ...] = ()
    lease: float = 60.0
    on_lease_expiry: Literal["reexecute", "unknown"] = "unknown"
    on_server_error: Literal["release", "store", "unknown"] = "release"
    release_statuses: frozenset[int] = frozenset({408, 409, 425, 429, 503})
    wait: float = 0.0
    header: str = "Idempotency-Key"
    body_field: str | None = None
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    max_records_per_principal: int | None = None
    max_unknown_per_principal: int | None = None
    ignore_paths: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    header_name: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        methods = frozenset(m.upper() for m in _as_iterable(self.methods, "methods"))
        unknown = methods - _HTTP_METHODS
        if unknown:
            _fail("methods", f"HTTP methods from {sorted(_HTTP_METHODS)}", sorted(unknown))
        object.__setattr__(self, "methods", methods)
        if not _MIN_TTL <= self.ttl <= _MAX_TTL:
            _fail("ttl", f"seconds between {_MIN_TTL:.0f} and {_MAX_TTL:.0f} (90 days)", self.ttl)
        if not 0 < self.lease < self.ttl:
            _fail("lease", "seconds greater than 0 and less than ttl", self.lease)
        if self.scope not in ("principal", "principal_route"):
            _fail("scope", "'principal' or 'principal_route'", self.scope)
        if self.on_lease_expiry not in ("reexecute", "unknown"):
            _fail("on_lease_expiry", "'reexecute' or 'unknown'", self.on_lease_expiry)
        if self.on_server_error not in ("release", "store", "unknown"):
            _fail("on_server_error", "'release', 'store' or 'unknown'", self.on_server_error)
        statuses = frozenset(_as_iterable(self.release_statuses, "release_statuses"))
        if any(not (isinstance(s, int) and 400 <= s <= 599) for s in statuses):
            _fail("release_statuses", "HTTP status codes from 400 to 599", sorted(statuses))
        object.__setattr__(self, "release_statuses", statuses)
        if self.on_store_error not in ("fail_closed", "fail_open"):
            _fail("on_store_error", "'fail_closed' or 'fail_open'", self.on_store_error)
        for name in ("max_records_per_principal", "max_unknown_per_principal"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                _fail(name, "a whole number >= 1, or None for no quota", value)
        if not 0 <= self.wait <= self.lease:
            _fail("wait", "seconds from 0 up to the lease", self.wait)
        if not self.header or not self.header.isascii() or " " in self.header:
            _fail("header", "an HTTP header name", self.header)
        fields = tuple(_as_iterable(self.ignore_fields, "ignore_fields"))
        if any(not f or not isinstance(f, str) for f in fields):
            _fail("ignore_fields", "non-empty field names or dotted paths", fields)
        object.__setattr__(self, "ignore_fields", fields)
        object.__setattr__(self, "ignore_paths", tuple(tuple(f.split(".")) for f in fields))
        object.__setattr__(self, "header_name", self.header.lower().encode("ascii"))

    def applies_to(self, method: str) -> bool:
        """Whether requests with ``method`` are protected by this policy."""
        return method in self.methods


def _as_iterable(value: object, name: str) -> Iterable[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        _fail(name, "a list", value)
    return value


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"IdempotencyPolicy.{name}: expected {expected}, got {got!r}")
