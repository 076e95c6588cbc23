"""Temporary rate-limit overrides: the value, its checks, and how it changes the policies.

An operator relaxes (or tightens) a limit for a while: a partner's limit raised for a
campaign (an override of one ``[[clients]]`` name in one policy), or a whole policy's limits
raised on a critical path during an incident (a *policy-wide* override, ``client`` None).
This module is the pure part: no store, no clock (``now`` is a parameter). The sharing
between workers, the audit trail and the events are ``_override_board.py``'s.

Rule 1: an override is in force while ``now < expires_at`` and never after: ``apply_overrides``
        leaves out every override whose ``expires_at`` has passed, whatever its caller read.
Rule 2: an override never changes the policy file's configuration: ``apply_overrides``
        returns new ``RateLimitPolicy`` values built from the file's, and the file's values
        are what the next override (or the end of every override) starts from again. So
        reverting is the absence of the override, nothing to undo.
Rule 3: a client override sets the limits of each of the client's principals in its policy
        (as the file's ``overrides`` do, and in their place while it lasts); a policy-wide
        override replaces the policy's ``limits`` and every tier's limits. A client's own
        override, of the file or temporary, still wins over a policy-wide one: it is the
        more specific.
Rule 4: one override per target (``policy client`` or ``policy *``) in force: of two or
        more naming one target, the one created later (``starts_at``, then ``id``) wins,
        whatever the order they are read in; the others are *superseded*.
Rule 5: an override whose policy or client the configuration in force does not have (a
        reload removed it), or whose limits that policy refuses (its algorithm changed), is
        left out, never half-applied; ``check_override`` refuses such an override when it
        is made, naming the field.
Rule 6: bounds: at most ``MAX_LIVE`` overrides in force at once; at most ``MAX_LIMITS``
        limits each, of at most 64 printable characters; ``by`` 1 to 64 printable
        characters, ``reason`` 1 to 200; an encoded override at most ``MAX_ENCODED`` bytes
        (``decode`` refuses anything else with ``ValueError``, never another exception,
        whatever the types of the fields). An override lasts at least ``MIN_DURATION``
        (1 second) and at most ``[rate_limit] max_override`` seconds (checked where it is
        made).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from surefoot.errors import ConfigurationError
from surefoot.ratelimit import RateLimitPolicy

__all__ = [
    "MAX_LIMITS",
    "MAX_LIVE",
    "MIN_DURATION",
    "TemporaryOverride",
    "apply_overrides",
    "check_override",
    "live_overrides",
]

#: The most overrides in force at once (Rule 6).
MAX_LIVE = 100
#: The most limits one override sets (Rule 6).
MAX_LIMITS = 8
#: The shortest override, in seconds (Rule 6): one a sync of every worker can see.
MIN_DURATION = 1.0
#: The longest encoded override (Rule 6).
MAX_ENCODED = 8192
_ID_CHARS = frozenset("0123456789abcdef")


@dataclass(frozen=True, kw_only=True, slots=True)
class TemporaryOverride:
    """Limits in force for a while in place of the policy file's (see the module's rules).

    Args:
        id: 32 hex digits, unique to this override (the audit trail's name for it).
        policy: the policy's name.
        client: a ``[[clients]]`` name, or None for every client of the policy.
        limits: ``"1000/minute"`` strings, parsed with the policy's algorithm.
        starts_at: when it was made (unix seconds).
        expires_at: when it ends by itself (unix seconds).
        by: who made it.
        reason: why.
    """

    id: str
    policy: str
    client: str | None
    limits: tuple[str, ...]
    starts_at: float
    expires_at: float
    by: str
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or len(self.id) != 32 or not set(self.id) <= _ID_CHARS:
            raise ValueError("id: expected 32 hex digits")
        if not isinstance(self.policy, str) or not 1 <= len(self.policy) <= 128:
            raise ValueError("policy: expected a policy's name")
        if self.client is not None and (
            not isinstance(self.client, str) or not 1 <= len(self.client) <= 128
        ):
            raise ValueError("client: expected a [[clients]] name")
        object.__setattr__(self, "limits", limits_of(self.limits))
        for name in ("starts_at", "expires_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected unix seconds")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite time")
        if self.expires_at <= self.starts_at:
            raise ValueError("expires_at: expected a time after starts_at")
        _text(self.by, "by", 64)
        _text(self.reason, "reason", 200)

    @property
    def target(self) -> str:
        """The slot it holds: ``"policy client"``, or ``"policy *"`` policy-wide (Rule 4)."""
        return f"{self.policy} {'*' if self.client is None else self.client}"

    def live(self, now: float) -> bool:
        """Whether it is in force at ``now`` (Rule 1)."""
        return now < self.expires_at

    def encode(self) -> bytes:
        """JSON bytes, as the store keeps them."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TemporaryOverride:
        """An override from ``encode``'s bytes.

        Raises:
            ValueError: the bytes are not an override within the bounds (Rule 6).
        """
        if len(raw) > MAX_ENCODED:
            raise ValueError(f"expected at most {MAX_ENCODED} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("expected JSON") from None
        if not isinstance(data, dict) or set(data) != _FIELDS:
            raise ValueError(f"expected an object of {sorted(_FIELDS)}")
        limits = data["limits"]
        if not isinstance(limits, list):
            raise ValueError("limits: expected a list")
        try:
            return cls(**{**data, "limits": tuple(limits)})
        except TypeError:  # a field of another type that a check did not name (Rule 6)
            raise ValueError("expected an override's fields") from None

    def listed(self, now: float) -> dict[str, Any]:
        """As the admin API and ``surefoot overrides list --json`` show it."""
        return {
            "id": self.id,
            "policy": self.policy,
            "client": self.client,
            "limits": list(self.limits),
            "starts_at": round(self.starts_at, 3),
            "expires_at": round(self.expires_at, 3),
            "remaining": round(max(0.0, self.expires_at - now), 3),
            "by": self.by,
            "reason": self.reason,
        }


_FIELDS = frozenset(("id", "policy", "client", "limits", "starts_at", "expires_at", "by", "reason"))


def limits_of(value: object) -> tuple[str, ...]:
    """``value`` as an override's limits: 1 to ``MAX_LIMITS`` strings (Rule 6); whether a
    policy accepts them is ``check_override``'s.

    Raises:
        ValueError: naming ``limits``.
    """
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError("limits: expected a list of limits such as ['1000/minute']")
    if not 1 <= len(value) <= MAX_LIMITS:
        raise ValueError(f"limits: expected 1 to {MAX_LIMITS} limits")
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= 64 or not item.isprintable():
            raise ValueError("limits: expected limits such as '1000/minute'")
    return tuple(item.strip() for item in value)


def _text(value: object, name: str, most: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= most or not value.isprintable():
        raise ValueError(f"{name}: expected 1 to {most} printable characters")
    return value


def live_overrides(
    overrides: Iterable[TemporaryOverride], now: float
) -> dict[str, TemporaryOverride]:
    """Target -> the override in force there at ``now`` (Rules 1 and 4)."""
    found: dict[str, TemporaryOverride] = {}
    for override in sorted(overrides, key=created):
        if override.live(now):
            found[override.target] = override
    return found


def created(override: TemporaryOverride) -> tuple[float, str]:
    """The order of creation of Rule 4: of two overrides of one target, the greater wins."""
    return override.starts_at, override.id


def apply_overrides(
    policies: Sequence[RateLimitPolicy],
    overrides: Iterable[TemporaryOverride],
    principals_of_client: Mapping[str, Sequence[str]],
    *,
    now: float,
) -> list[RateLimitPolicy]:
    """``policies`` with the overrides in force at ``now`` applied (Rules 1 to 5).

    Example:
        >>> apply_overrides(config.rate_limit_policies, live, {"acme": ["cred:..."]}, now=now)

    Args:
        policies: the policy file's policies (never changed: Rule 2).
        overrides: the overrides read from the store, in any order.
        principals_of_client: each ``[[clients]]`` name -> its principals.
        now: the time they are applied at.
    """
    live = live_overrides(overrides, now)
    out: list[RateLimitPolicy] = []
    for policy in policies:
        wide = live.get(f"{policy.name} *")
        clients = [o for o in live.values() if o.policy == policy.name and o.client is not None]
        for override in ([wide] if wide is not None else []) + clients:
            policy = _applied(policy, override, principals_of_client)
        out.append(policy)
    return out


def check_override(
    policies: Sequence[RateLimitPolicy],
    override: TemporaryOverride,
    principals_of_client: Mapping[str, Sequence[str]],
) -> None:
    """Whether ``override`` applies to ``policies`` as it is (Rule 5).

    Raises:
        ValueError: naming the field (``policy``, ``client`` or ``limits``) and what is
            expected.
    """
    named = {policy.name: policy for policy in policies}
    policy = named.get(override.policy)
    if policy is None:
        raise ValueError(
            f"policy: expected one of the policies {sorted(named)}, got {override.policy!r}"
        )
    if override.client is not None and override.client not in principals_of_client:
        raise ValueError(f"client: expected a [[clients]] name, got {override.client!r}")
    try:
        if override.client is None:
            _wide(policy, override)
        else:
            _client(policy, override, principals_of_client)
    except ConfigurationError as exc:
        raise ValueError(f"limits: {exc}") from None


def _applied(
    policy: RateLimitPolicy,
    override: TemporaryOverride,
    principals_of_client: Mapping[str, Sequence[str]],
) -> RateLimitPolicy:
    """``policy`` with ``override`` applied, or as it was if it does not apply (Rule 5)."""
    try:
        if override.client is None:
            return _wide(policy, override)
        return _client(policy, override, principals_of_client)
    except (ConfigurationError, KeyError):
        return policy


def _wide(policy: RateLimitPolicy, override: TemporaryOverride) -> RateLimitPolicy:
    tiers = dict.fromkeys(policy.tiers, override.limits)
    return replace(policy, limits=override.limits, tiers=tiers)


def _client(
    policy: RateLimitPolicy,
    override: TemporaryOverride,
    principals_of_client: Mapping[str, Sequence[str]],
) -> RateLimitPolicy:
    assert override.client is not None
    principals = principals_of_client[override.client]
    if not principals:  # a client without a credential yet: its limits checked all the same
        replace(policy, overrides={"": override.limits})
        return policy
    overrides = {**policy.overrides, **dict.fromkeys(principals, override.limits)}
    return replace(policy, overrides=overrides)
