"""Envoy's rate-limit service: ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``.

Envoy's ``envoy.filters.http.ratelimit`` filter sends, for each request, a domain and a
list of descriptors, each a list of (key, value) entries made by the route's
``rate_limits`` actions. ``EnvoyRateLimitService`` decides them against the gateway's
rate-limit policies (``[[rate_limit.policies]]``, ``[[clients]]`` tiers and overrides,
shadow and rollouts) in the gateway's store, under the gateway's store keys, so Envoy,
``surefoot serve`` and ``surefoot decide`` share one set of counters. ``serve_envoy``
runs it on a ``grpc.aio`` server.

Rule 1: a descriptor names its policy with a ``policy`` entry, else a ``generic_key``
        entry (Envoy's ``generic_key`` action); both present, they must agree. A
        descriptor that names no policy, or a policy the file does not define, is answered
        ``OK`` with no ``current_limit`` (unlimited), as Envoy's own service answers a
        descriptor its configuration does not know; so is a descriptor whose policy does
        not cover its route, or whose counted principal the policy allows.
Rule 2: the principal is the gateway's (``Identity.rate_limit_principal``): an entry
        keyed by a header of ``[identity] credential_headers``, lower-case (``api_key``
        also stands for ``x-api-key``), is that header's credential, parsed and hashed as
        the gateway does; entries of headers the file does not list are ignored. A
        credential over ``MAX_VALUE`` characters or one the gateway cannot parse counts
        as unknown: the address. ``remote_address`` (Envoy's ``remote_address`` action:
        the client address through Envoy's trusted hops) is ``addr:<ip>``, counted when
        there is no
        credential, when the credential is not one of ``[[clients]]``' keys (if the file
        lists any), or when the credentials are ambiguous (never a fresh bucket). A policy
        counted ``per = "address"`` counts ``remote_address``. A known policy with nothing to
        count (neither entry) is ``INVALID_ARGUMENT``: Envoy's configuration is wrong.
Rule 3: the route: with ``path`` (the ``:path`` pseudo-header, query ignored) and
        ``method`` (``:method``, default GET) entries, the path without its query is
        measured and canonicalised as the gateway does, and the policy's
        ``routes``, ``exempt``, ``costs`` and ``per_route`` apply; without ``path``, Envoy's
        own route matching chose where the descriptor is sent: route "" and cost 1. A
        path the gateway refuses (or longer than ``MAX_VALUE``) makes the request
        ``OVER_LIMIT`` with the ``invalid_path`` problem as its body, counting nothing:
        a client never turns its request into an error Envoy lets through.
Rule 4: every other entry (``header_match``, ``destination_cluster``, ``request_headers`` of
        other headers...) is a condition Envoy already checked by sending the descriptor:
        it never chooses a counter, so a value a client controls never buys a fresh
        bucket. Count separately under another ``policy`` name instead.
Rule 5: the cost is the descriptor's ``hits_addend`` if set, else the request's, else 1 (0
        reads as 1: surefoot has no zero-cost query), at most ``MAX_HITS_ADDEND``, times
        the policy's route cost. Descriptors that land on one store key add their costs.
Rule 6: one ``ShouldRateLimit`` is one ``acquire`` of the store over every item of every
        descriptor: all or nothing, as one gateway request against several policies. The
        answer is ``OVER_LIMIT`` when an enforced limit refuses, and then nothing is
        charged to any descriptor (Envoy's own service charges the others).
Rule 7: each descriptor's status reports its most constrained limit: a refusing one (the
        longest wait), else the lowest share remaining: ``current_limit`` (name,
        ``requests_per_unit`` and ``unit`` when the window is one unit or the quota's
        period, else ``UNKNOWN`` with the amount), ``limit_remaining`` and
        ``duration_until_reset`` (the wait when refused, else until full). Shadowed
        policies are decided, reported OK, and left out of the headers.
Rule 8: ``response_headers_to_add`` carries draft-10 ``RateLimit-Policy`` and ``RateLimit``
        (the gateway's values: ``t`` is the seconds until more quota, on a refusal the
        ``Retry-After``), one member per limit name (the most constrained), and when over
        the limit ``Retry-After``, ``Content-Type`` and ``raw_body``: the gateway's 429
        problem document (``store_unavailable`` under Rule 10, with status 429: the
        status Envoy answers with).
Rule 9: bounds on what Envoy's configuration makes: a domain (non-empty, at most
        ``MAX_VALUE``), at most ``MAX_DESCRIPTORS`` descriptors of at most ``MAX_ENTRIES``
        entries, keys of at most ``MAX_VALUE`` characters, each entry surefoot reads at
        most once per descriptor; else ``INVALID_ARGUMENT`` and nothing is counted. Values
        a client controls (credentials, path, other headers) are never a reason for
        ``INVALID_ARGUMENT`` (Rules 2 and 3): Envoy lets such a request through.
Rule 10: a store that fails or does not answer within ``store_timeout``: the descriptors
        of an enforced ``fail_closed`` policy are ``OVER_LIMIT`` (``Retry-After: 1``);
        every other descriptor is ``OK`` (``fail_open``; ``local_fallback`` fails open
        here). Envoy's ``failure_mode_deny`` covers only this service being unreachable.
Rule 11: temporary overrides (``surefoot.gateway.SharedOverrides``, in the store) apply as
        in the gateway: ``sync_overrides`` reads them (``serve_envoy``: at start and
        every ``SYNC_EVERY`` seconds while it serves), and one that expires is dropped on
        the request path.

Concurrency limits are skipped (the protocol has no release), and a ``leaky_queue`` delay
cannot be applied by Envoy: such a request is admitted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from surefoot._asgi import new_request_id
from surefoot._paths import canonical_path
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    CredentialsAmbiguous,
    InvalidPath,
    QuotaExceeded,
    RateLimitExceeded,
    StoreUnavailable,
    SurefootError,
    problem_document,
)
from surefoot.gateway import GatewayConfig, SharedOverrides
from surefoot.identity import Identity
from surefoot.ratelimit import (
    Item,
    Limit,
    RateLimitDecision,
    RateLimitPolicy,
    RateLimitStore,
    limit_key,
    quota_period,
)

__all__ = [
    "MAX_DESCRIPTORS",
    "MAX_ENTRIES",
    "MAX_HITS_ADDEND",
    "MAX_VALUE",
    "SYNC_EVERY",
    "EnvoyRateLimitService",
    "EnvoyServer",
    "serve_envoy",
]

MAX_DESCRIPTORS = 32
MAX_ENTRIES = 16
MAX_VALUE = 4096
MAX_HITS_ADDEND = 10_000
#: Seconds between two reads of the temporary overrides (as the gateway's workers).
SYNC_EVERY = 1.0

_OK = rls_pb2.RateLimitResponse.OK
_OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
_Unit = rls_pb2.RateLimitResponse.RateLimit
_UNITS = {1.0: _Unit.SECOND, 60.0: _Unit.MINUTE, 3600.0: _Unit.HOUR, 86400.0: _Unit.DAY}
_PERIODS = {"day": _Unit.DAY, "month": _Unit.MONTH}
_READ = ("policy", "generic_key", "remote_address", "path", "method")
#: Entry keys standing for another credential header (the documented ``descriptor_key``).
_ALIASES = {"api_key": "x-api-key"}
_FOREVER = 2**31 - 1
_log = logging.getLogger(__name__)


class _Invalid(ValueError):
    """A request Envoy should not have sent (Rule 9, Rule 2's missing principal)."""


@dataclass(slots=True)
class _Check:
    """One descriptor's limits: indexes into the request's items (None: unlimited)."""

    policy: RateLimitPolicy | None = None
    limits: list[tuple[str, Limit, int]] = field(default_factory=list)  # name, limit, item
    #: The path the gateway refuses (Rule 3): the request is refused, nothing counted.
    refused: InvalidPath | None = None


def _whole(seconds: float) -> int:
    """Seconds rounded up (a client that waits this long is never early), at least 0."""
    if seconds == math.inf:
        return _FOREVER
    return max(0, math.ceil(seconds - 1e-9))


def _sf(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(limit: Limit) -> str:
    return limit.period if limit.period is not None else f"{limit.window:g}s"


class EnvoyRateLimitService:
    """The ``ShouldRateLimit`` handler, for ``grpc.aio`` (see the module's Rules).

    Example:
        >>> service = EnvoyRateLimitService(load_config("policy.toml"), store=store)
        >>> server = grpc.aio.server()
        >>> service.add_to(server)

    Args:
        config: the gateway's policy file: policies, clients (keys, tiers), identity.
        store: the rate-limit store (the gateway's, to share its counters).
        clock: the time of decisions (tests inject ``ManualClock``).
        domain: when given, any other domain is answered OK with no limits.
        store_timeout: seconds to wait for the store before Rule 10 applies.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: RateLimitStore,
        clock: Clock | None = None,
        domain: str | None = None,
        store_timeout: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock if clock is not None else SystemClock()
        self.domain = domain
        self.store_timeout = store_timeout
        self.policies: Mapping[str, RateLimitPolicy] = {}
        self.tiers: Mapping[str, str] = {}
        self.identity = Identity()
        self.credentials: Mapping[str, str] = {}  # entry key -> credential header
        self.config = config
        # Every store a URL names is also the overrides' board store (as the gateway's).
        self.overrides = SharedOverrides(cast(Any, store), clock=self.clock)
        self.update(config)

    def update(self, config: GatewayConfig) -> None:
        """Swap in a reloaded policy file; counters of kept limits carry on (their store
        keys depend only on policy name, limit window and algorithm, principal, route).

        Between two requests: a request's descriptors are decided without a pause, so
        they all see one file.
        """
        self.config = config
        self.policies = {p.name: p for p in self.overrides.policies(config)}
        self.tiers = dict(config.tiers)
        headers = tuple(h.lower() for h in config.root.identity.credential_headers)
        self.identity = Identity(
            credential_headers=headers,
            use_user=False,
            known_credentials=config.api_keys or None,
        )
        self.credentials = {h: h for h in headers} | {
            alias: h for alias, h in _ALIASES.items() if h in headers and alias not in headers
        }

    def apply_overrides(self) -> None:
        """Put the overrides in force on the policies (Rule 11)."""
        self.policies = {p.name: p for p in self.overrides.policies(self.config)}

    async def sync_overrides(self) -> None:
        """Read the temporary overrides and apply them if the set in force changed; a
        store that fails keeps those in force here."""
        if await self.overrides.refresh():
            self.apply_overrides()

    async def sync_every(self, every: float = SYNC_EVERY) -> None:
        """``sync_overrides`` every ``every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every)
            await self.sync_overrides()

    def add_to(self, server: Any) -> None:
        """Register the service on a ``grpc.aio.Server``."""
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, server)

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # gRPC names it
        """Decide one Envoy request: ``RateLimitResponse``, or ``INVALID_ARGUMENT``."""
        try:
            return await self.decide(request)
        except _Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def decide(self, request: Any) -> Any:
        """The ``RateLimitResponse`` to a ``RateLimitRequest``.

        Raises:
            ValueError: a malformed request (``ShouldRateLimit``: ``INVALID_ARGUMENT``).
        """
        if self.overrides.expire(self.clock.now()):  # an override ended (Rule 11)
            self.apply_overrides()
        domain = request.domain
        if not domain or len(domain) > MAX_VALUE:
            raise _Invalid(f"domain: expected 1 to {MAX_VALUE} characters, got {len(domain)}")
        descriptors = request.descriptors
        if len(descriptors) > MAX_DESCRIPTORS:
            raise _Invalid(
                f"descriptors: expected at most {MAX_DESCRIPTORS}, got {len(descriptors)}"
            )
        checks: list[_Check] = []
        items: list[Item] = []
        where: dict[str, int] = {}
        for index, descriptor in enumerate(descriptors):
            checks.append(self._check(index, descriptor, request.hits_addend, items, where))
        response = rls_pb2.RateLimitResponse(overall_code=_OK)
        if self.domain is not None and domain != self.domain:
            items, checks = [], [_Check() for _ in checks]
        refused = next((c.refused for c in checks if c.refused is not None), None)
        if refused is not None:  # Rule 3: nothing is counted
            for check in checks:
                code = _OK if check.refused is None else _OVER
                response.statuses.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=code))
            response.overall_code = _OVER
            self._refusal(response, refused, None)
            return response
        now = self.clock.now()
        if not items:
            response.statuses.extend(
                rls_pb2.RateLimitResponse.DescriptorStatus(code=_OK) for _ in checks
            )
            return response
        try:
            async with asyncio.timeout(self.store_timeout):
                admitted, decisions = await self.store.acquire(items, now)
        except Exception as exc:  # the store failed or timed out: Rule 10
            _log.warning("Envoy rate-limit service: the store failed (%s)", type(exc).__name__)
            return self._outage(checks, items)
        return self._answer(response, checks, items, admitted, decisions, now)

    def _check(
        self,
        index: int,
        descriptor: Any,
        request_hits: int,
        items: list[Item],
        where: dict[str, int],
    ) -> _Check:
        """One descriptor's policy and limits, its items added to ``items`` (Rules 1-5)."""
        entries = descriptor.entries
        if len(entries) > MAX_ENTRIES:
            raise _Invalid(
                f"descriptors[{index}]: expected at most {MAX_ENTRIES} entries, got {len(entries)}"
            )
        found: dict[str, str] = {}
        for entry in entries:
            key, value = entry.key, entry.value
            if len(key) > MAX_VALUE:
                raise _Invalid(
                    f"descriptors[{index}]: expected keys of at most {MAX_VALUE} characters"
                )
            if key in _READ or key in self.credentials:
                if key in found:
                    raise _Invalid(f"descriptors[{index}]: the entry {key!r} appears twice")
                found[key] = value
        name = found.get("policy")
        generic = found.get("generic_key")
        if name is not None and generic is not None and name != generic:
            raise _Invalid(
                f"descriptors[{index}]: the policy and generic_key entries name different "
                f"policies ({name!r}, {generic!r})"
            )
        policy = self.policies.get(name if name is not None else generic or "")
        if policy is None:
            return _Check()  # Rule 1
        hits = request_hits
        if descriptor.HasField("hits_addend"):
            hits = descriptor.hits_addend.value
        if hits > MAX_HITS_ADDEND:
            raise _Invalid(
                f"descriptors[{index}]: hits_addend: expected at most {MAX_HITS_ADDEND}, got {hits}"
            )
        hits = max(1, hits)
        principal, address = self._principal(index, found)
        counted = address if policy.per == "address" else principal
        if counted is None:
            raise _Invalid(
                f"descriptors[{index}]: policy {policy.name!r} counts "
                f"{'addresses' if policy.per == 'address' else 'principals'}: expected a "
                "remote_address entry"
                + ("" if policy.per == "address" else " or a credential header's")
            )
        route, cost = "", hits
        if "path" in found:
            method = found.get("method", "GET").upper()
            raw = found["path"].partition("?")[0]  # the query never chooses a route
            try:
                if len(raw) > MAX_VALUE:
                    raise InvalidPath(reason=f"it is longer than {MAX_VALUE} characters")
                path = canonical_path(raw.encode()).path
            except InvalidPath as exc:
                return _Check(policy, refused=exc)
            matched = policy.route_for(method, path)
            if matched is None:
                return _Check()
            route = matched if policy.per_route else ""
            cost = hits * policy.cost_for(method, path)
        if counted in policy.allow:
            return _Check()
        assert principal is not None  # counted is principal, or address with principal from it
        limits = [
            limit
            for limit in policy.limits_for(counted, self.tiers.get(principal))
            if limit.algorithm != "concurrency"
        ]
        check = _Check(policy)
        enforce = policy.enforced_for(counted)
        single = len(limits) == 1
        for limit in limits:
            key = limit_key(policy.name, limit, counted, route)
            at = where.get(key)
            if at is None:
                at = where[key] = len(items)
                items.append(Item(key, limit.algorithm or "", limit, cost, enforce))
            else:
                items[at] = items[at]._replace(cost=items[at].cost + cost)
            label = policy.name if single else f"{policy.name}-{_label(limit)}"
            check.limits.append((label, limit, at))
        return check

    def _principal(self, index: int, found: Mapping[str, str]) -> tuple[str | None, str | None]:
        """(the counted principal, ``addr:<ip>``) of a descriptor's entries (Rule 2)."""
        address = None
        raw = found.get("remote_address")
        if raw is not None:
            try:
                if len(raw) > MAX_VALUE:
                    raise ValueError(raw)
                address = str(ipaddress.ip_address(raw.strip()))
            except ValueError:
                raise _Invalid(
                    f"descriptors[{index}]: remote_address: expected an IP address"
                ) from None
        credentials = [(self.credentials[k], v) for k, v in found.items() if k in self.credentials]
        addr = None if address is None else "addr:" + address
        if not credentials:
            return addr, addr
        scope = {
            "type": "http",
            "headers": [(name.encode(), value.encode()) for name, value in credentials],
            "client": None if address is None else (address, 0),
        }
        if any(len(value) > MAX_VALUE for _, value in credentials):
            return addr, addr  # an oversize credential is unknown: the address (Rule 2)
        principal: str | None
        try:
            principal = self.identity.rate_limit_principal(scope)
        except (CredentialsAmbiguous, SurefootError, ValueError):  # ambiguous or malformed
            principal = addr
        return principal, addr

    def _answer(
        self,
        response: Any,
        checks: Sequence[_Check],
        items: Sequence[Item],
        admitted: bool,
        decisions: Sequence[RateLimitDecision],
        now: float,
    ) -> Any:
        """Statuses and headers (Rules 7 and 8)."""
        if not admitted:
            # Nothing was charged: what is left without this request's cost.
            decisions = [
                d
                if not d.allowed
                else d._replace(remaining=min(i.limit.capacity, d.remaining + i.cost))
                for i, d in zip(items, decisions, strict=True)
            ]
        shown: dict[str, tuple[Limit, RateLimitDecision]] = {}
        refusals: list[tuple[str, str, Item, RateLimitDecision]] = []
        for check in checks:
            status = rls_pb2.RateLimitResponse.DescriptorStatus(code=_OK)
            if check.policy is not None and check.limits:
                label, limit, at = min(
                    check.limits,
                    key=lambda c: (
                        decisions[c[2]].allowed,
                        -decisions[c[2]].retry_after,
                        decisions[c[2]].remaining / c[1].capacity,
                    ),
                )
                decision, item = decisions[at], items[at]
                refused = item.enforce and not decision.allowed
                status.code = _OVER if refused else _OK
                status.current_limit.CopyFrom(_current_limit(label, limit))
                status.limit_remaining = max(0, decision.remaining)
                status.duration_until_reset.seconds = _whole(
                    decision.retry_after if refused else decision.reset_after
                )
                for label, limit, at in check.limits:
                    d, i = decisions[at], items[at]
                    if not i.enforce:
                        continue
                    if not d.allowed:
                        refusals.append((label, check.policy.name, i, d))
                    kept = shown.get(label)
                    if kept is None or _tighter(d, kept[1]):
                        shown[label] = (limit, d)
            response.statuses.append(status)
        if admitted or not refusals:
            response.overall_code = _OK
        else:
            response.overall_code = _OVER
        over = response.overall_code == _OVER
        add = response.response_headers_to_add
        if shown:
            add.append(
                base_pb2.HeaderValue(key="ratelimit-policy", value=_policy_field(shown, now))
            )
            add.append(
                base_pb2.HeaderValue(key="ratelimit", value=_state_field(shown, rejected=over))
            )
        if over:
            _, policy, item, decision = max(refusals, key=lambda r: r[3].retry_after)
            retry_after = max(1, _whole(decision.retry_after))
            problem = QuotaExceeded if item.algorithm == "quota" else RateLimitExceeded
            fields: dict[str, Any] = {
                "limit": item.limit.describe(),
                "wait": "1 second" if retry_after == 1 else f"{retry_after} seconds",
                "policy": policy,
                "retry_after": retry_after,
                # The draft's member naming the violated limits, as the gateway's.
                "violated-policies": list(dict.fromkeys(r[0] for r in refusals)),
            }
            self._refusal(response, problem(**fields), retry_after)
        return response

    def _outage(self, checks: Sequence[_Check], items: Sequence[Item]) -> Any:
        """The answer while the store is down (Rule 10)."""
        response = rls_pb2.RateLimitResponse(overall_code=_OK)
        for check in checks:
            closed = (
                check.policy is not None
                and check.policy.on_store_error == "fail_closed"
                and any(items[at].enforce for _, _, at in check.limits)
            )
            response.statuses.append(
                rls_pb2.RateLimitResponse.DescriptorStatus(code=_OVER if closed else _OK)
            )
            if closed:
                response.overall_code = _OVER
        if response.overall_code == _OVER:
            self._refusal(response, StoreUnavailable(retry_after=1), 1)
        return response

    @staticmethod
    def _refusal(response: Any, error: SurefootError, retry_after: int | None) -> None:
        """Envoy answers every ``OVER_LIMIT`` with its ``rate_limited_status`` (429): the
        document says so (RFC 9457: its ``status`` is the response's), whatever the problem."""
        document = problem_document(error, request_id=new_request_id())
        document["status"] = 429
        response.raw_body = json.dumps(document, separators=(",", ":")).encode()
        if retry_after is not None:
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(retry_after))
            )
        response.response_headers_to_add.append(
            base_pb2.HeaderValue(key="content-type", value="application/problem+json")
        )


def _tighter(new: RateLimitDecision, old: RateLimitDecision) -> bool:
    """Whether ``new`` is the more constrained: refusing, then the longer wait or less left."""
    if new.allowed != old.allowed:
        return not new.allowed
    if not new.allowed:
        return new.retry_after > old.retry_after
    return new.remaining < old.remaining


def _current_limit(name: str, limit: Limit) -> Any:
    """Envoy's ``RateLimit`` of a surefoot limit (Rule 7)."""
    unit = _UNITS.get(limit.window) if limit.period is None else _PERIODS.get(limit.period)
    return _Unit(
        name=name,
        requests_per_unit=limit.capacity,
        unit=_Unit.UNKNOWN if unit is None else unit,
    )


def _policy_field(shown: Mapping[str, tuple[Limit, RateLimitDecision]], now: float) -> str:
    """``RateLimit-Policy``: the gateway's members (``_headers`` in ``surefoot.ratelimit``)."""
    members = []
    for name, (limit, _) in shown.items():
        window = limit.window
        if limit.algorithm == "quota":
            start, end = quota_period(now, limit.period or "day", limit.timezone)
            window = end - start
        members.append(f"{_sf(name)};q={limit.capacity};w={_whole(window)}")
    return ", ".join(members)


def _state_field(shown: Mapping[str, tuple[Limit, RateLimitDecision]], *, rejected: bool) -> str:
    """``RateLimit``: ``r`` remaining, ``t`` seconds until more (the ``Retry-After`` when
    this limit refused)."""
    states = []
    for name, (_, decision) in shown.items():
        if rejected and not decision.allowed:
            t = max(1, _whole(decision.retry_after))
        elif decision.available_after <= 0:
            t = 0
        else:
            t = max(1, _whole(decision.available_after))
        states.append(f"{_sf(name)};r={max(0, decision.remaining)};t={t}")
    return ", ".join(states)


@dataclass(slots=True)
class EnvoyServer:
    """A running rate-limit service: its ``grpc.aio`` server and the port it listens on."""

    server: Any
    port: int
    service: EnvoyRateLimitService
    #: Whether ``stop`` closes the store (``serve_envoy`` opened it).
    owns_store: bool
    #: The task reading the temporary overrides every ``SYNC_EVERY`` seconds (Rule 11).
    syncing: asyncio.Task[None] | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds) and reading the overrides,
        then close an owned store."""
        if self.syncing is not None:
            self.syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.syncing
            self.syncing = None
        await self.server.stop(grace)
        if self.owns_store:
            await self.service.store.aclose()


async def serve_envoy(
    config: GatewayConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    store: RateLimitStore | None = None,
    clock: Clock | None = None,
    domain: str | None = None,
) -> EnvoyServer:
    """Start Envoy's rate-limit service on ``host:port`` (0: a free port) and return it.

    Example:
        >>> envoy = await serve_envoy(load_config("policy.toml"), port=8081)
        >>> ...
        >>> await envoy.stop(grace=5)

    Args:
        config: the gateway's policy file.
        store: the rate-limit store; None: the one ``[rate_limit] store`` names, opened
            here and closed by ``stop``.
        clock, domain: as ``EnvoyRateLimitService``'s.
    """
    owns = store is None
    if store is None:
        from surefoot.storage import store_from_url

        store = store_from_url(config.store_url(config.root.rate_limit.store))
    service = EnvoyRateLimitService(config, store=store, clock=clock, domain=domain)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
    service.add_to(server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
        await service.sync_overrides()  # the overrides in force before the first request
        await server.start()
    except BaseException:
        if owns:
            await store.aclose()
        raise
    syncing = asyncio.ensure_future(service.sync_every(SYNC_EVERY))
    return EnvoyServer(server, bound, service, owns, syncing)
