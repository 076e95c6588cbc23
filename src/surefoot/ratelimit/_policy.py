"""``RateLimitPolicy``: who is limited, where, by what, as an immutable value.

A request meets every policy whose ``routes`` match it (all routes when empty), unless the
route is in the policy's ``exempt`` list or the principal is in its ``allow`` list. The
limits applied are the principal's ``overrides`` entry, else its tier's limits, else the
policy's own. Each limit is counted under a store key that is an explicit function of
(policy name, limit window and algorithm, principal, route template when ``per_route``),
so swapping policies at run time keeps the counters of limits that kept their window.
A policy counted ``per="address"`` puts the client address (``addr:<ip>``) where the
principal goes, in the key and in ``allow`` and ``overrides``: one counter for everything
that comes from one address, whatever its credentials (a ceiling in front of
per-credential limits).

A new or tighter policy is staged: ``shadow=True`` (decided and reported for everyone,
enforced for no one), then a ``Rollout`` (enforced for a share of the principals and a
named list, shadowed for the others), then neither (enforced for everyone).

Rule 1: a policy is enforced for a principal (``enforced_for``) when it has no rollout and
        is not ``shadow``, or when it has a rollout that lists the principal or whose
        ``percent`` is above the principal's bucket ``100 * h / 2**64``, where ``h`` is
        the first 8 bytes of ``sha256(policy name + NUL + principal)`` read big-endian.
        The bucket is the same in every process, host and restart (never Python's salted
        ``hash()``), so a client is enforced everywhere or nowhere, and raising
        ``percent`` only adds principals: 10 to 50 keeps the first 10 %. The comparison
        is exact (``100 * h < percent * 2**64``: an integer against a float times a power
        of two), so 0 enforces only the listed principals and 100 every principal.
Rule 2: a rollout is never beside ``shadow=True``: the policy is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Literal, NoReturn

from surefoot._routes import RouteTable
from surefoot.errors import ConfigurationError
from surefoot.ratelimit._limit import ALGORITHMS, Limit, parse_limit

__all__ = ["RateLimitPolicy", "Rollout", "limit_key"]

LimitSpec = str | Limit

#: What a policy may do while the store is down.
STORE_ERROR_ACTIONS = ("fail_open", "fail_closed", "local_fallback")


@dataclass(frozen=True)
class Rollout:
    """Who a policy is enforced for while it is rolled out; it shadows everyone else.

    Example:
        >>> Rollout(percent=10)  # one principal in ten, the same ten everywhere
        >>> Rollout(principals={"cred:3a1f..."})  # these principals only
        >>> RateLimitPolicy(
        ...     "search",
        ...     limits=["30/minute"],
        ...     rollout=Rollout(percent=25, principals={"cred:3a1f..."}),
        ... )

    Args:
        percent: the share of principals enforced, from 0 to 100, chosen by a stable hash
            of the policy's name and the principal (``_policy`` Rule 1); raising it keeps
            every principal enforced before.
        principals: principals always enforced, whatever ``percent``.

    Warning:
        The share is of principals, not of requests: with 10 % a heavy client is either
        wholly enforced or wholly shadowed.
    """

    _: KW_ONLY
    percent: float = 0.0
    principals: Iterable[str] = frozenset()

    def __post_init__(self) -> None:
        percent = self.percent
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not math.isfinite(percent)
            or not 0 <= percent <= 100
        ):
            raise ConfigurationError(
                f"Rollout.percent: expected a number from 0 to 100, got {percent!r}"
            )
        if isinstance(self.principals, str | bytes):
            raise ConfigurationError(
                "Rollout.principals: expected a collection of principals, got one string "
                f"{self.principals!r}"
            )
        principals = frozenset(self.principals)
        for principal in principals:
            if not isinstance(principal, str) or not principal:
                raise ConfigurationError(
                    "Rollout.principals: expected principals (non-empty strings), "
                    f"got {principal!r}"
                )
        object.__setattr__(self, "percent", float(percent))
        object.__setattr__(self, "principals", principals)

    def enforces(self, policy: str, principal: str) -> bool:
        """Whether the policy named ``policy`` is enforced for ``principal`` (Rule 1)."""
        if principal in self.principals:
            return True
        return _bucket(policy, principal) * 100 < self.percent * _SPAN

    @staticmethod
    def bucket(policy: str, principal: str) -> float:
        """The principal's place from 0 to 100 for the policy named ``policy``: enforced
        when below ``percent`` (Rule 1; rounded to a float, where ``enforces`` compares
        exactly)."""
        return _bucket(policy, principal) * 100 / _SPAN


#: The buckets: the first 8 bytes of a SHA-256 (Rule 1).
_SPAN = 2**64


def _bucket(policy: str, principal: str) -> int:
    material = f"{policy}\0{principal}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")


@dataclass(frozen=True)
class RateLimitPolicy:
    """A named set of limits and where they apply.

    Example:
        >>> RateLimitPolicy("default", limits=["100/minute", "10/second"])
        >>> RateLimitPolicy(
        ...     "search",
        ...     limits=["30/minute"],
        ...     algorithm="gcra",
        ...     routes=["GET /v1/search*"],
        ...     costs={"GET /v1/search/export": 10},
        ...     tiers={"pro": ["300/minute"]},
        ...     shadow=True,
        ... )

    Args:
        name: identifies the policy in headers, problems, events and store keys.
        limits: ``"100/minute"`` strings or ``Limit`` values; all must allow a request.
        algorithm: the algorithm of limits that do not name their own.
        routes: route templates (``"POST /v1/charges"``, ``"/v1/*"``) the policy covers;
            empty: every route.
        exempt: route templates the policy never limits (health checks, critical paths).
        allow: principals the policy never limits (an allowlist).
        costs: route template -> cost of a request there (default 1).
        per_route: count each route template separately instead of per principal only.
        per: ``"principal"`` (the default) counts each principal on its own;
            ``"address"`` counts each client address over all of its principals, so that
            fresh credentials from one address cannot buy fresh buckets (the rate
            limiter's principal must then be a ``surefoot.identity.Identity``, which
            knows the trusted proxies). ``allow`` and ``overrides`` then name addresses
            (``"addr:10.0.0.5"``). Not beside per-principal policies on Redis Cluster,
            where the keys of one decision must share a hash slot.
        tiers: tier name -> limits, for principals the middleware's ``tier`` function
            places in that tier.
        overrides: principal -> limits, for single clients (wins over tiers).
        shadow: decide, count and report what would be rejected, but never reject.
        rollout: enforce the policy only for the principals a ``Rollout`` chooses, and
            shadow it for the others (not beside ``shadow=True``).
        on_store_error: what to do while the store is down (see ``docs/ratelimit.md``):
            ``"fail_open"`` lets requests through unlimited, ``"fail_closed"`` answers 503
            ``store_unavailable``, ``"local_fallback"`` limits with this process's own
            counters, each limit's amount divided by the rate limiter's
            ``fallback_workers``.
    """

    name: str
    _: KW_ONLY
    limits: Sequence[LimitSpec]
    algorithm: str = "sliding_window"
    routes: Sequence[str] = ()
    exempt: Sequence[str] = ()
    allow: Iterable[str] = frozenset()
    costs: Mapping[str, int] = field(default_factory=dict)
    per_route: bool = False
    per: Literal["principal", "address"] = "principal"
    tiers: Mapping[str, Sequence[LimitSpec]] = field(default_factory=dict)
    overrides: Mapping[str, Sequence[LimitSpec]] = field(default_factory=dict)
    shadow: bool = False
    rollout: Rollout | None = None
    on_store_error: Literal["fail_open", "fail_closed", "local_fallback"] = "fail_open"
    _route_table: RouteTable[bool] = field(init=False, repr=False, compare=False)
    _exempt_table: RouteTable[bool] = field(init=False, repr=False, compare=False)
    _cost_table: RouteTable[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            _fail(self.name, "name", "letters, digits, '-', '_' or '.'", self.name)
        if self.algorithm not in ALGORITHMS:
            _fail(self.name, "algorithm", f"one of {sorted(ALGORITHMS)}", self.algorithm)
        set_ = object.__setattr__
        set_(self, "limits", self._limits(self.limits, "limits"))
        if not self.limits:
            _fail(self.name, "limits", "at least one limit, such as '100/minute'", [])
        set_(self, "tiers", {t: self._limits(v, f"tiers.{t}") for t, v in self.tiers.items()})
        set_(
            self,
            "overrides",
            {p: self._limits(v, f"overrides.{p}") for p, v in self.overrides.items()},
        )
        set_(self, "routes", tuple(self.routes))
        set_(self, "exempt", tuple(self.exempt))
        set_(self, "allow", frozenset(self.allow))
        for template, cost in self.costs.items():
            if not isinstance(cost, int) or cost < 1:
                _fail(self.name, f"costs[{template!r}]", "a positive whole number", cost)
        set_(self, "costs", dict(self.costs))
        if self.per not in ("principal", "address"):
            _fail(self.name, "per", "'principal' or 'address'", self.per)
        if self.on_store_error not in STORE_ERROR_ACTIONS:
            _fail(
                self.name,
                "on_store_error",
                "'fail_open', 'fail_closed' or 'local_fallback'",
                self.on_store_error,
            )
        if self.rollout is not None and not isinstance(self.rollout, Rollout):
            _fail(self.name, "rollout", "a surefoot.ratelimit.Rollout or None", self.rollout)
        if self.rollout is not None and self.shadow:
            _fail(
                self.name,
                "rollout",
                "no rollout beside shadow=True (a rollout shadows the principals it does "
                "not enforce: drop shadow=True)",
                self.rollout,
            )
        # Route tables, compiled once (their errors name the bad template).
        set_(self, "_route_table", RouteTable((t, True) for t in self.routes))
        set_(self, "_exempt_table", RouteTable(((t, True) for t in self.exempt), strict=bool))
        set_(self, "_cost_table", RouteTable(self.costs.items()))

    def _limits(self, specs: Sequence[LimitSpec], where: str) -> tuple[Limit, ...]:
        if isinstance(specs, str | Limit):
            specs = [specs]
        out = []
        for spec in specs:
            try:
                limit = parse_limit(
                    spec, algorithm=self.algorithm if isinstance(spec, str) else None
                )
            except ConfigurationError as exc:
                _fail(self.name, where, str(exc), spec)
            if limit.algorithm is None:
                limit = replace(limit, algorithm=self.algorithm)
            out.append(limit)
        return tuple(out)

    # -- applying the policy to one request ---------------------------------------------

    def route_for(self, method: str, path: str) -> str | None:
        """The matched template if this policy covers the request ("" for all routes), else None."""
        if self._exempt_table.match(method, path) is not None:
            return None
        if not self.routes:
            return ""
        matched = self._route_table.match(method, path)
        return None if matched is None else matched[0]

    def cost_for(self, method: str, path: str) -> int:
        matched = self._cost_table.match(method, path)
        return 1 if matched is None else matched[1]

    def enforced_for(self, principal: str) -> bool:
        """Whether the policy refuses ``principal`` (the counted one: its address when
        ``per="address"``) over its limits, or only reports it (Rule 1)."""
        if self.rollout is None:
            return not self.shadow
        return self.rollout.enforces(self.name, principal)

    def limits_for(self, principal: str, tier: str | None) -> tuple[Limit, ...]:
        override = self.overrides.get(principal)
        if override is not None:
            return tuple(override)  # type: ignore[arg-type]
        if tier is not None and tier in self.tiers:
            return tuple(self.tiers[tier])  # type: ignore[arg-type]
        return tuple(self.limits)  # type: ignore[arg-type]


def limit_key(policy: str, limit: Limit, principal: str, route: str) -> str:
    """The store key of one limit for one principal (and route): stable across reloads.

    ``rl:{<principal tag>}:<policy>:<digest>``: the braces are a Redis Cluster hash tag,
    so every limit of one principal lives in one slot and a request's limits are still
    decided by one atomic script.
    """
    identity = f"{limit.algorithm}|{limit.window:g}|{limit.period or ''}|{limit.timezone}"
    material = "\x1f".join((policy, identity, principal, route)).encode()
    digest = hashlib.blake2b(material, digest_size=16).hexdigest()
    tag = hashlib.blake2b(principal.encode(), digest_size=6).hexdigest()
    return f"rl:{{{tag}}}:{policy}:{digest}"


def _fail(policy: str, name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"RateLimitPolicy {policy!r}.{name}: expected {expected}, got {got!r}")
