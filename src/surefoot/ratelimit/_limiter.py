"""``RateLimiter``: policies, identity and a store, deciding one request at a time.

The engine behind ``RateLimitMiddleware`` and the FastAPI dependency:

1. Find the policies that cover the request (routes, exemptions, allowlists) and the
   principal; no policy, no verdict. The policies are compiled once into a ``Plan``
   (``_plan.py``): which cover every route, each limit's header fields, and each
   principal's store items, cached. An ``Identity`` is asked for its rate-limit view
   (a credential it does not know counts as its address) and, for policies counted
   ``per="address"``, for the address. A resolver that raises a ``ClientError`` (an
   ``Identity`` raises ``CredentialsAmbiguous``) refuses the request with that problem.
2. Take one ``Item`` per limit (its store key is a function of policy, limit, principal
   and route) and ``acquire`` them all at once from the store: one atomic step. A plain
   ``MemoryStore`` is asked without a coroutine (``acquire_now``): it never waits.
3. Turn the decisions into a ``Verdict``: admitted or not, the problem to answer with,
   the ``RateLimit`` header fields, how long to wait first (``leaky_queue``), and the
   concurrency slots to free when the response ends.
4. When the store fails (``StoreUnavailable``, a driver error, or no answer within
   ``store_timeout``), or its ``StoreHealth`` says it is down and this request is not the
   probe, decide by the policies' ``on_store_error``: any enforced ``fail_closed`` policy
   answers 503 ``store_unavailable`` (``Retry-After``: until the next probe); else the
   ``local_fallback`` policies are decided by this process's ``MemoryStore``, each
   limit's amount (and burst) divided by ``fallback_workers``, rounded down, at least 1;
   else the request is admitted unlimited (``fail_open``).

A caller that knows what of a request decides its plan may name it: ``check(scope,
key)``, where ``key`` determines everything step 1 reads of the scope (its route method
and path, its principal, its address, its tier) under the policies in force. The first
request of a key is planned as above; the next ones reuse its principal, limits and items
(at most ``_PREPARED`` keys, then it starts again; none once the policies change), with
this request's time and ``StoreHealth`` permit. A plan holding concurrency slots is never
reused: each request takes slots of its own (tokens). ``surefoot decide`` names its
requests so, by the fields an edge forwards; the middleware names none.

``RateLimiter`` (async) and ``SyncRateLimiter`` (blocking, for ``surefoot.wsgi``) share
everything but the store calls: ``_prepare`` plans and asks ``StoreHealth``, the store is
called by the subclass, and ``_decided`` or ``_failed`` turn its answer into the verdict.

The guard timeout exists because the limiter is on every request's path: the network
stores give up after their own short timeout, but a store without one (a custom store, a
SQLite file whose lock holder is stuck) would otherwise hold every request. It defaults
to 1 s, above the network stores' own timeouts so that theirs fire first and name the
failure, and below any client's patience. A plain ``MemoryStore`` never waits, and a
store whose own ``timeout`` is shorter than the guard already bounds its calls: neither
is guarded, since the timer would cost as much as an in-memory decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal, NamedTuple, TypeVar

from surefoot._asgi import Scope, request_id, route_method
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
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    ClientError,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    QuotaExceeded,
    RateLimitExceeded,
    StoreUnavailable,
    SurefootError,
)
from surefoot.events import EventHook, LoggingHook, emit, wanting
from surefoot.identity import Identity, PrincipalResolver, default_principal
from surefoot.ratelimit import _events as ev
from surefoot.ratelimit._algorithms import RateLimitDecision, uncharged
from surefoot.ratelimit._core import Item
from surefoot.ratelimit._headers import legacy_headers, policy_field, state_field, whole_seconds
from surefoot.ratelimit._limit import Limit
from surefoot.ratelimit._plan import Covering, Plan, Slot
from surefoot.ratelimit._policy import RateLimitPolicy
from surefoot.ratelimit._store import RateLimitStore, SyncRateLimitStore

__all__ = ["RateLimiter", "SyncRateLimiter", "TierResolver", "Verdict"]

T = TypeVar("T")

TierResolver = Callable[[Scope, str], "str | None"]

#: How many plans a limiter keeps by their caller's key (``check``'s ``key``).
_PREPARED = 4096

_PROBLEMS: dict[str, type[SurefootError]] = {
    "quota": QuotaExceeded,
    "concurrency": ConcurrencyLimitExceeded,
}


@dataclass(slots=True)
class Verdict:
    """What to do with one request."""

    admitted: bool
    #: The problem to answer with when not admitted (429, or 503 for a store failing closed).
    error: SurefootError | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Seconds to wait before going on (``leaky_queue``).
    delay: float = 0.0
    #: Concurrency slots to free when the response ends.
    held: list[Item] = field(default_factory=list)
    #: True when this process's fallback counters decided (the store was down).
    local: bool = False


class _Limiter:
    """What ``RateLimiter`` and ``SyncRateLimiter`` share: configuration, planning and the
    verdicts (no I/O; the store is called by the subclasses' ``check`` and ``release``)."""

    store: Any

    def __init__(
        self,
        *,
        store: Any,
        policies: Sequence[RateLimitPolicy],
        principal: PrincipalResolver = default_principal,
        tier: TierResolver | None = None,
        headers: bool = True,
        legacy_headers: bool = False,
        legacy_reset: Literal["seconds", "epoch"] = "seconds",
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
        fallback_workers: int | None = None,
        store_health: StoreHealth | None = None,
    ) -> None:
        if legacy_reset not in ("seconds", "epoch"):
            raise ConfigurationError(
                f"legacy_reset: expected 'seconds' or 'epoch', got {legacy_reset!r}"
            )
        if fallback_workers is not None and (
            not isinstance(fallback_workers, int)
            or isinstance(fallback_workers, bool)
            or fallback_workers < 1
        ):
            raise ConfigurationError(
                "rate limiter fallback_workers: expected how many worker processes share the "
                f"store, a whole number >= 1, got {fallback_workers!r}"
            )
        if store_health is not None and not isinstance(store_health, StoreHealth):
            raise ConfigurationError(
                "rate limiter store_health: expected a surefoot.storage.StoreHealth, "
                f"got {type(store_health).__name__}"
            )
        # Imported here: surefoot.storage.memory imports this package's core.
        from surefoot.storage.memory import MemoryStore

        self.store = store
        self.fallback_workers = fallback_workers
        self.health = store_health if store_health is not None else StoreHealth()
        # Per-process counters for local_fallback policies while the store is down (its
        # calls never wait, and each holds the store's lock: threads may share it).
        self._fallback = MemoryStore()
        self.principal: PrincipalResolver = principal
        self.address: PrincipalResolver | None = None
        if isinstance(principal, Identity):
            # Unknown credentials must not buy fresh buckets (``Identity``, Rule 4).
            self.principal = principal.rate_limit_principal
            self.address = principal.address_principal
        self.tier = tier
        self.headers = headers
        self.legacy_headers = legacy_headers
        self.legacy_reset = legacy_reset
        self.clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self._wants = wanting(self.hooks)
        self.policies: tuple[RateLimitPolicy, ...] = ()
        self._plan = Plan(())
        self._prepared: dict[Hashable, _Prepared] = {}
        self.update_policies(policies)

    def update_policies(self, policies: Sequence[RateLimitPolicy]) -> None:
        """Swap the policies, atomically for requests; counters of kept limits carry on.

        A limit keeps its counter when its policy name, algorithm and window stay the
        same (its amount may change).
        """
        policies = tuple(policies)
        names = [p.name for p in policies]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"rate limiter policies: names must be unique, got {names}")
        supported = self.store.rate_limit_algorithms
        for policy in policies:
            if policy.on_store_error == "local_fallback" and self.fallback_workers is None:
                raise ConfigurationError(
                    f"RateLimitPolicy {policy.name!r}.on_store_error: 'local_fallback' expects "
                    "the rate limiter's fallback_workers (how many worker processes share "
                    "the store, so that each admits its share), got fallback_workers=None"
                )
            if policy.per == "address" and self.address is None:
                raise ConfigurationError(
                    f"RateLimitPolicy {policy.name!r}.per: 'address' expects the rate "
                    "limiter's principal to be a surefoot.identity.Identity (it knows the "
                    "trusted proxies), got a custom principal resolver"
                )
            for limits in (policy.limits, *policy.tiers.values(), *policy.overrides.values()):
                for limit in limits:
                    assert isinstance(limit, Limit)
                    if limit.algorithm not in supported:
                        raise ConfigurationError(
                            f"RateLimitPolicy {policy.name!r}: algorithm {limit.algorithm!r} is "
                            f"not supported by {type(self.store).__name__}, which supports "
                            f"{sorted(supported)}"
                        )
        # One assignment: a request sees the old plan or the new, never a mix; no request
        # is planned by the old one's items afterwards (planning never waits in between).
        self._plan = Plan(policies)
        self._prepared = {}
        self.policies = policies

    def _checks(
        self,
        scope: Scope,
        method: str,
        path: str,
        principal: str,
        address: str,
        covering: Covering,
    ) -> tuple[tuple[Slot, ...], tuple[Item, ...], bytes | None]:
        """The request's limits (``Slot``) and their store items, in the same order, and
        their ``RateLimit-Policy`` value when it is known in advance (one set of limits)."""
        tier = self.tier(scope, principal) if self.tier is not None else None
        slots: tuple[Slot, ...] = ()
        items: tuple[Item, ...] = ()
        fixed: bytes | None = None
        for plan, route in covering:
            counted = address if plan.per_address else principal
            if counted in plan.allow:
                continue
            limits = plan.limits_for(counted, tier)
            found = limits.items(counted, route if plan.per_route else "")
            cost = plan.cost_for(method, path)
            if cost != 1 or limits.concurrency:
                found = limits.fresh(found, cost)
            fixed = None if slots else limits.policy_field
            slots += limits.slots
            items += found
        return slots, items, fixed

    def _prepare(self, scope: Scope, key: Hashable | None = None) -> Verdict | _Pending | None:
        """Everything before the store is asked: the verdict when no store call is needed
        (no policy, a refused principal, a store known to be down), else what to ask.
        ``key``: see the module's docstring."""
        prepared = None if key is None else self._prepared.get(key)
        if prepared is None:
            planned = self._planned(scope)
            if not isinstance(planned, _Prepared):
                return planned
            prepared = planned
            if key is not None and not any(item.token for item in prepared.items):
                if len(self._prepared) >= _PREPARED:
                    self._prepared.clear()
                self._prepared[key] = prepared
        principal, slots, items, fixed = prepared
        now = self.clock.now()
        permit = self.health.permit(now)
        if not permit.call:
            return self._outage(scope, principal, slots, items, now, None)
        return _Pending(scope, principal, slots, items, fixed, now, permit)

    def _planned(self, scope: Scope) -> Verdict | _Prepared | None:
        """Step 1 and the items: what ``_prepare`` may keep by a key."""
        plan = self._plan
        method, path = route_method(scope), scope["path"]
        covering = plan.covering(method, path)
        if not covering:
            return None
        try:
            principal = self.principal(scope)
        except ClientError as exc:  # ambiguous credentials: the request must change
            return Verdict(False, exc)
        address = ""
        if plan.per_address and any(p.per_address for p, _ in covering):
            assert self.address is not None  # update_policies made sure of it
            address = self.address(scope)
        slots, items, fixed = self._checks(scope, method, path, principal, address, covering)
        if not items:
            return None
        return _Prepared(principal, slots, items, fixed)

    def _failed(self, pending: _Pending, exc: Exception) -> Verdict:
        """The verdict after the store call of ``pending`` failed with ``exc``."""
        scope = pending.scope
        self._report(scope, self.health.failed(pending.permit, self.clock.now()), exc)
        return self._outage(
            scope, pending.principal, pending.slots, pending.items, self.clock.now(), exc
        )

    def _decided(
        self, pending: _Pending, admitted: bool, decisions: Sequence[RateLimitDecision]
    ) -> Verdict:
        """The verdict after the store answered ``pending``."""
        if pending.permit.probe:
            self._report(
                pending.scope, self.health.succeeded(pending.permit, self.clock.now()), None
            )
        return self._verdict(
            pending.scope,
            pending.principal,
            pending.slots,
            pending.items,
            admitted,
            decisions,
            pending.now,
            pending.fixed,
        )

    def _verdict(
        self,
        scope: Scope,
        principal: str,
        slots: Sequence[Slot],
        items: Sequence[Item],
        admitted: bool,
        decisions: Sequence[RateLimitDecision],
        now: float,
        fixed: bytes | None = None,
        *,
        local: bool = False,
    ) -> Verdict:
        """``fixed``: the ``RateLimit-Policy`` value of ``slots``, when known in advance."""
        plan = self._plan
        # The enforced limits: only they refuse, and the headers show only them.
        shown_slots, shown_items, shown = slots, items, decisions
        if plan.shadow:
            fixed = None
            shown_slots, shown_items, shown = [], [], []
            for slot, item, decision in zip(slots, items, decisions, strict=True):
                if item.enforce:
                    shown_slots.append(slot)
                    shown_items.append(item)
                    shown.append(decision)
                elif not decision.allowed:
                    self._emit(
                        ev.RateLimitShadowRejected,
                        scope,
                        principal,
                        policy=slot.policy.name,
                        limit=item.limit.describe(),
                        retry_after=decision.retry_after,
                    )
        if not admitted:
            # Nothing was charged: report what is left without this request's cost.
            shown = [
                uncharged(d, i.cost, i.limit) if d.allowed else d
                for i, d in zip(shown_items, shown, strict=True)
            ]
            headers = self._headers(shown_slots, shown, now, fixed, rejected=True)
            error = self._rejection(scope, principal, shown_slots, shown_items, shown)
            return Verdict(False, error, headers)
        headers = self._headers(shown_slots, shown, now, fixed, rejected=False)
        delay = max(d.delay for d in decisions) if plan.queued else 0.0
        if self._wants(ev.RateLimitAllowed):
            policies = tuple(dict.fromkeys(s.policy.name for s in slots))
            self._emit(ev.RateLimitAllowed, scope, principal, policies=policies, delay=delay)
        held = [item for item in items if item.token] if plan.concurrency else []
        return Verdict(True, None, headers, delay, held, local)

    def _headers(
        self,
        slots: Sequence[Slot],
        decisions: Sequence[RateLimitDecision],
        now: float,
        fixed: bytes | None,
        *,
        rejected: bool,
    ) -> list[tuple[bytes, bytes]]:
        if not slots or not (self.headers or self.legacy_headers):
            return []
        out: list[tuple[bytes, bytes]] = []
        if self.headers:
            policy = policy_field(slots, now=now) if fixed is None else fixed
            out = [
                (b"ratelimit-policy", policy),
                (b"ratelimit", state_field(slots, decisions, rejected=rejected)),
            ]
        if self.legacy_headers:
            out += legacy_headers(slots, decisions, now=now, reset=self.legacy_reset)
        return out

    def _rejection(
        self,
        scope: Scope,
        principal: str,
        slots: Sequence[Slot],
        items: Sequence[Item],
        decisions: Sequence[RateLimitDecision],
    ) -> SurefootError:
        refused = [r for r in zip(slots, items, decisions, strict=True) if not r[2].allowed]
        slot, item, decision = max(refused, key=lambda r: r[2].retry_after)
        self._emit(
            ev.RateLimitRejected,
            scope,
            principal,
            policy=slot.policy.name,
            limit=item.limit.describe(),
            retry_after=decision.retry_after,
        )
        problem = _PROBLEMS.get(item.algorithm, RateLimitExceeded)
        retry_after = max(1, whole_seconds(decision.retry_after))
        fields: dict[str, Any] = {
            "limit": item.limit.describe(),
            "wait": "1 second" if retry_after == 1 else f"{retry_after} seconds",
            "policy": slot.policy.name,
            "retry_after": retry_after,
            # The draft's member naming the violated limits.
            "violated-policies": list(dict.fromkeys(s.name for s, _, _ in refused)),
        }
        return problem(**fields)

    def _outage(
        self,
        scope: Scope,
        principal: str,
        slots: Sequence[Slot],
        items: Sequence[Item],
        now: float,
        exc: Exception | None,
    ) -> Verdict:
        """Decide without the store: ``exc`` is this request's failure, None if skipped."""
        checks = list(zip(slots, items, strict=True))
        if any(s.policy.on_store_error == "fail_closed" for s, i in checks if i.enforce):
            action = "fail_closed"
        elif any(s.policy.on_store_error == "local_fallback" for s, _ in checks):
            action = "local_fallback"
        else:
            action = "fail_open"
        if exc is None:
            self._emit(ev.RateLimitStoreBypassed, scope, principal, action=action)
        else:
            self._emit(
                ev.RateLimitStoreFailed, scope, principal, action=action, error=failure_name(exc)
            )
        if action == "fail_open":
            return Verdict(True)
        if action == "fail_closed":
            # A fresh error: whatever the store raised (and its text) stays in the logs.
            retry_after = max(1, whole_seconds(self.health.retry_after(now)))
            return Verdict(False, StoreUnavailable(retry_after=retry_after))
        assert self.fallback_workers is not None  # update_policies made sure of it
        workers = self.fallback_workers
        local_slots, local_items = [], []
        for slot, item in checks:
            if slot.policy.on_store_error == "local_fallback":
                share = _share(item.limit, workers)
                local_slots.append(Slot(slot.name, share, slot.policy))
                local_items.append(item._replace(limit=share))
        admitted, decisions = self._fallback.acquire_now(local_items, now)
        return self._verdict(
            scope, principal, local_slots, local_items, admitted, decisions, now, local=True
        )

    def _report(self, scope: Scope, change: HealthChange | None, exc: Exception | None) -> None:
        """Emit the one event of an outage's start or end."""
        if change is None:
            return
        cls = StoreDown if change.state is HealthState.DOWN else StoreRecovered
        if self._wants(cls):
            event = health_event(
                change,
                at=self.clock.now(),
                request_id=request_id(scope),
                store=self.store,
                layer="ratelimit",
                error="" if exc is None else failure_name(exc),
            )
            emit(self.hooks, event)

    def _emit(
        self, cls: type[ev.RateLimitEvent], scope: Scope, principal: str, **fields: object
    ) -> None:
        if self._wants(cls):
            event = cls(
                at=self.clock.now(),
                request_id=request_id(scope),
                method=scope["method"],
                path=scope["path"],
                principal=principal,
                **fields,
            )
            emit(self.hooks, event)


class RateLimiter(_Limiter):
    """Decides requests against policies; see ``RateLimitMiddleware`` for the arguments."""

    store: RateLimitStore

    def __init__(
        self,
        *,
        store: RateLimitStore,
        policies: Sequence[RateLimitPolicy],
        principal: PrincipalResolver = default_principal,
        tier: TierResolver | None = None,
        headers: bool = True,
        legacy_headers: bool = False,
        legacy_reset: Literal["seconds", "epoch"] = "seconds",
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
        fallback_workers: int | None = None,
        store_timeout: float | None = 1.0,
        store_health: StoreHealth | None = None,
    ) -> None:
        if not isinstance(store, RateLimitStore):
            raise ConfigurationError(
                "rate limiter store: expected a RateLimitStore (acquire, release, "
                f"rate_limit_algorithms), got {type(store).__name__}"
            )
        if store_timeout is not None and not store_timeout > 0:
            raise ConfigurationError(
                f"rate limiter store_timeout: expected seconds > 0 or None, got {store_timeout!r}"
            )
        super().__init__(
            store=store,
            policies=policies,
            principal=principal,
            tier=tier,
            headers=headers,
            legacy_headers=legacy_headers,
            legacy_reset=legacy_reset,
            clock=clock,
            hooks=hooks,
            fallback_workers=fallback_workers,
            store_health=store_health,
        )
        from surefoot.storage.memory import MemoryStore

        self.store_timeout = store_timeout
        # A MemoryStore answers without ever waiting, and a network store that bounds
        # each call by its own ``timeout`` (RedisStore, PostgresStore) fails first anyway:
        # guarding either would only cost time (an asyncio timeout costs about as much
        # as a whole in-memory decision).
        own = getattr(store, "timeout", None)
        bounded = isinstance(own, int | float) and store_timeout is not None and own < store_timeout
        self._memory = store if type(store) is MemoryStore else None
        self._guard = None if self._memory is not None or bounded else store_timeout

    async def check(self, scope: Scope, key: Hashable | None = None) -> Verdict | None:
        """The verdict on an HTTP request, or None when no policy covers it. ``key``: what
        determines its plan, for its reuse (see the module's docstring)."""
        pending = self._prepare(scope, key)
        if not isinstance(pending, _Pending):
            return pending
        items, now = pending.items, pending.now
        try:
            if self._memory is not None:
                admitted, decisions = self._memory.acquire_now(items, now)
            elif self._guard is None:
                admitted, decisions = await self.store.acquire(items, now)
            else:
                admitted, decisions = await self._guarded(self.store.acquire(items, now))
        except Exception as exc:  # StoreUnavailable, the guard's TimeoutError, a driver error
            return self._failed(pending, exc)
        except BaseException:
            self.health.abandoned(pending.permit, self.clock.now())
            raise
        return self._decided(pending, admitted, decisions)

    async def release(self, verdict: Verdict) -> None:
        """Free the verdict's concurrency slots.

        A failure, or a store known to be down, leaves them to their lease: a release
        never waits for a store that is down and never serves as its probe.
        """
        now = self.clock.now()
        if verdict.local:
            for item in verdict.held:
                await self._fallback.release(item.key, item.token, now)
            return
        for item in verdict.held:
            if not self.health.healthy:
                return
            with contextlib.suppress(Exception):
                await self._guarded(self.store.release(item.key, item.token, now))

    async def _guarded(self, call: Awaitable[T]) -> T:
        """Await a store call, cut off after ``store_timeout`` (``TimeoutError``)."""
        if self._guard is None:
            return await call
        async with asyncio.timeout(self._guard):
            return await call


class SyncRateLimiter(_Limiter):
    """``RateLimiter`` for blocking code (WSGI workers, Django, Flask), on a
    ``SyncRateLimitStore``: the same plan, verdicts, headers, problems and outage rules.

    Example:
        >>> limiter = SyncRateLimiter(
        ...     store=SyncMemoryStore(),
        ...     policies=[RateLimitPolicy("default", limits=["100/minute"])],
        ... )
        >>> verdict = limiter.check(scope)  # None: no policy covers the request

    The arguments are ``RateLimiter``'s but ``store_timeout``: a blocking call cannot be
    cut off safely, so each call is bounded by the sync store's own timeout alone.
    """

    store: SyncRateLimitStore

    def __init__(
        self,
        *,
        store: SyncRateLimitStore,
        policies: Sequence[RateLimitPolicy],
        principal: PrincipalResolver = default_principal,
        tier: TierResolver | None = None,
        headers: bool = True,
        legacy_headers: bool = False,
        legacy_reset: Literal["seconds", "epoch"] = "seconds",
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
        fallback_workers: int | None = None,
        store_health: StoreHealth | None = None,
    ) -> None:
        if not isinstance(store, SyncRateLimitStore) or inspect.iscoroutinefunction(store.acquire):
            raise ConfigurationError(
                "rate limiter store: expected a SyncRateLimitStore (blocking acquire, release, "
                f"rate_limit_algorithms), got {type(store).__name__}"
            )
        super().__init__(
            store=store,
            policies=policies,
            principal=principal,
            tier=tier,
            headers=headers,
            legacy_headers=legacy_headers,
            legacy_reset=legacy_reset,
            clock=clock,
            hooks=hooks,
            fallback_workers=fallback_workers,
            store_health=store_health,
        )

    def check(self, scope: Scope) -> Verdict | None:
        """The verdict on an HTTP request, or None when no policy covers it."""
        pending = self._prepare(scope)
        if not isinstance(pending, _Pending):
            return pending
        try:
            admitted, decisions = self.store.acquire(pending.items, pending.now)
        except Exception as exc:  # StoreUnavailable, a timeout, a driver error
            return self._failed(pending, exc)
        except BaseException:
            self.health.abandoned(pending.permit, self.clock.now())
            raise
        return self._decided(pending, admitted, decisions)

    def release(self, verdict: Verdict) -> None:
        """Free the verdict's concurrency slots (as ``RateLimiter.release``)."""
        now = self.clock.now()
        if verdict.local:
            for item in verdict.held:
                _run_now(self._fallback.release(item.key, item.token, now))
            return
        for item in verdict.held:
            if not self.health.healthy:
                return
            with contextlib.suppress(Exception):
                self.store.release(item.key, item.token, now)


class _Prepared(NamedTuple):
    """A request's principal, limits, items and ``RateLimit-Policy`` value (if fixed)."""

    principal: str
    slots: tuple[Slot, ...]
    items: tuple[Item, ...]
    fixed: bytes | None


@dataclass(slots=True)
class _Pending:
    """A request planned and permitted, waiting for the store's answer."""

    scope: Scope
    principal: str
    slots: tuple[Slot, ...]
    items: tuple[Item, ...]
    fixed: bytes | None
    now: float
    permit: Permit


def _run_now(call: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (a ``MemoryStore`` call) to its end, without a loop."""
    try:
        call.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    call.close()
    raise RuntimeError("expected a coroutine that never waits")


@lru_cache(maxsize=4096)
def _share(limit: Limit, workers: int) -> Limit:
    """One process's share of ``limit``: amount and burst divided, rounded down, at least 1."""
    burst = None if limit.burst is None else max(1, limit.burst // workers)
    return replace(limit, amount=max(1, limit.amount // workers), burst=burst)
