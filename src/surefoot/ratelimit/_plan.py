"""The rate limiter's policies, compiled once so that a request only looks things up.

``Plan(policies)`` is made by ``RateLimiter.update_policies``. For one request:

1. ``Plan.covering(method, path)``: the policies that cover the request, each with the
   route template it matched. A policy without ``routes`` or ``exempt`` covers every
   request; when every policy does, the answer is one tuple made in advance, and otherwise
   only the policies with routes match the request's.
2. ``PolicyPlan.limits_for(counted, tier)``: the ``LimitSet`` that applies (the counted
   principal's override, its tier's limits, or the policy's own), compiled in advance:
   each limit's ``Slot`` (its policy and its header fields, ``_headers.Reported``), the
   whole ``RateLimit-Policy`` value of the set, and the store ``Item`` of each limit for
   one (principal, route), cached per set (the same clients come back: the key's hashing
   is skipped).
3. ``LimitSet.fresh``: the items of a request whose route has a cost, or that holds a
   concurrency slot (its token is new for every request), made from the cached ones.

Rule 1: a plan decides what the policies' own methods decide (``route_for``, ``cost_for``,
        ``limits_for``, ``limit_key``, ``enforced_for``: an item's ``enforce``); it only
        decides it once.
Rule 2: the caches are bounded: at most ``KEYS_PER_SET`` (principal, route) pairs per set.
Rule 3: ``Plan.shadow`` is true when some policy may not be enforced for some principal
        (``shadow`` or a ``rollout``): the rate limiter then reports the shadow items that
        would refuse and shows only the enforced ones in the headers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from surefoot.ratelimit._core import Item
from surefoot.ratelimit._headers import Reported, fixed_policy_field
from surefoot.ratelimit._limit import Limit
from surefoot.ratelimit._policy import RateLimitPolicy, limit_key

__all__ = ["KEYS_PER_SET", "LimitSet", "Plan", "PolicyPlan", "Slot"]

KEYS_PER_SET = 16384

Covering = Sequence[tuple["PolicyPlan", str]]


@dataclass(frozen=True, slots=True)
class Slot(Reported):
    """One limit of one policy, as a request's verdict reports it."""

    policy: RateLimitPolicy


class LimitSet:
    """The limits one policy applies to a principal, compiled."""

    __slots__ = ("concurrency", "items", "limits", "policy", "policy_field", "slots")

    def __init__(self, policy: RateLimitPolicy, limits: Sequence[Limit]) -> None:
        self.policy = policy
        self.limits = tuple(limits)
        single = len(self.limits) == 1
        self.slots = tuple(
            Slot(policy.name if single else f"{policy.name}-{_label(limit)}", limit, policy)
            for limit in self.limits
        )
        #: ``RateLimit-Policy``'s value for these limits alone, unless a quota's changes.
        self.policy_field = fixed_policy_field(self.slots)
        self.concurrency = any(limit.algorithm == "concurrency" for limit in self.limits)
        self.items = lru_cache(maxsize=KEYS_PER_SET)(self._items)

    def _items(self, counted: str, route: str) -> tuple[Item, ...]:
        """The items of ``counted`` on ``route``, at cost 1 and without a token."""
        name, enforce = self.policy.name, self.policy.enforced_for(counted)
        return tuple(
            Item(limit_key(name, limit, counted, route), limit.algorithm or "", limit, 1, enforce)
            for limit in self.limits
        )

    def fresh(self, items: tuple[Item, ...], cost: int) -> tuple[Item, ...]:
        """``items`` at ``cost``, each concurrency limit with a new token."""
        return tuple(
            item._replace(
                cost=cost,
                token=secrets.token_hex(8) if item.algorithm == "concurrency" else "",
            )
            for item in items
        )


class PolicyPlan:
    """One policy, compiled."""

    __slots__ = (
        "allow",
        "costs",
        "default",
        "everywhere",
        "overrides",
        "per_address",
        "per_route",
        "policy",
        "tiers",
    )

    def __init__(self, policy: RateLimitPolicy) -> None:
        self.policy = policy
        self.everywhere = not policy.routes and not policy.exempt
        self.per_address = policy.per == "address"
        self.per_route = policy.per_route
        self.allow = policy.allow
        self.costs = bool(policy.costs)
        self.default = LimitSet(policy, _limits(policy.limits))
        self.tiers = {t: LimitSet(policy, _limits(v)) for t, v in policy.tiers.items()}
        self.overrides = {p: LimitSet(policy, _limits(v)) for p, v in policy.overrides.items()}

    def limits_for(self, counted: str, tier: str | None) -> LimitSet:
        """As ``RateLimitPolicy.limits_for``: an override, else the tier's, else the policy's."""
        if self.overrides:
            override = self.overrides.get(counted)
            if override is not None:
                return override
        if tier is not None:
            return self.tiers.get(tier, self.default)
        return self.default

    def cost_for(self, method: str, path: str) -> int:
        return self.policy.cost_for(method, path) if self.costs else 1


class Plan:
    """Every policy of a rate limiter, compiled (see the module)."""

    __slots__ = ("_everywhere", "concurrency", "per_address", "policies", "queued", "shadow")

    def __init__(self, policies: Sequence[RateLimitPolicy]) -> None:
        self.policies = tuple(PolicyPlan(policy) for policy in policies)
        everywhere = all(p.everywhere for p in self.policies)
        self._everywhere = tuple((p, "") for p in self.policies) if everywhere else None
        self.per_address = any(p.per_address for p in self.policies)
        self.shadow = any(p.policy.shadow or p.policy.rollout is not None for p in self.policies)
        sets = [
            s for p in self.policies for s in (p.default, *p.tiers.values(), *p.overrides.values())
        ]
        self.concurrency = any(s.concurrency for s in sets)
        self.queued = any(limit.algorithm == "leaky_queue" for s in sets for limit in s.limits)

    def covering(self, method: str, path: str) -> Covering:
        """The policies covering a request, each with the route template it matched."""
        if self._everywhere is not None:
            return self._everywhere
        out = []
        for plan in self.policies:
            if plan.everywhere:
                out.append((plan, ""))
            else:
                route = plan.policy.route_for(method, path)
                if route is not None:
                    out.append((plan, route))
        return out


def _limits(specs: Sequence[str | Limit]) -> tuple[Limit, ...]:
    """A policy's limits, which its constructor made ``Limit`` values."""
    out = []
    for spec in specs:
        assert isinstance(spec, Limit)
        out.append(spec)
    return tuple(out)


def _label(limit: Limit) -> str:
    """A short, stable name for one of several limits of a policy: ``60s``, ``day``."""
    if limit.algorithm == "concurrency":
        return "concurrency"
    if limit.period is not None:
        return limit.period
    return f"{limit.window:g}s"
