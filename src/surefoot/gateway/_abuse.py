"""The entries an operator makes and lifts (admin API and CLI): checked, bounded, logged.

Rule 1: an entry names exactly one subject: ``address``, ``network`` (CIDR, host bits
        refused), ``principal`` (a ``[[clients]]`` name, or ``cred:``/``user:``/``addr:``),
        ``key`` (an API key, hashed at once: never stored, logged or echoed) or
        ``account`` (a login name, hashed at once).
Rule 2: a ban lasts ``duration`` (seconds or ``30m``, ``2h``, ``7d``) or until ``until``
        (unix seconds), at most ``[abuse] max_ban``; without either it never expires,
        unless ``[abuse] require_expiry`` refuses that. An allow, a limit or a challenge
        may have no expiry, except that a limit needs its ``rate`` (requests per second).
Rule 3: the policy file's entries are changed in the file only: a slot the file holds is
        refused with a message saying so.
Rule 4: every change is an ``EntryAdded`` or ``EntryRemoved`` event with who asked
        (``by``) and why (``reason``): the abuse log's lines and the metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from surefoot._masking import shown as shown_value
from surefoot.abuse import (
    Action,
    Entry,
    EntryAdded,
    EntryRemoved,
    Kind,
    SharedBans,
    account_hash,
    shown,
    subject,
)
from surefoot.errors import AbuseEntriesFull
from surefoot.events import EventHook, emit
from surefoot.gateway._config import GatewayConfig
from surefoot.identity import hash_credential

__all__ = ["FIELDS", "AbuseControl", "by_of", "duration_seconds", "listed"]

#: What an entry is made of (the admin API's body, the CLI's options).
FIELDS = (
    "action",
    "address",
    "network",
    "principal",
    "key",
    "account",
    "duration",
    "until",
    "reason",
    "rate",
    "by",
)
_SUBJECTS = ("address", "network", "principal", "key", "account")
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhdw]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration_seconds(value: object, name: str = "duration") -> float:
    """Seconds from a number or a duration such as ``30m``, ``2h``, ``3d``, ``1w``.

    Raises:
        ValueError: naming ``name`` and what is expected.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    else:
        found = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"{name}: expected seconds or a duration (30m, 2h, 3d)")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name}: expected a finite duration > 0")
    return seconds


class AbuseControl:
    """Makes and lifts entries for an operator (see the module's rules).

    Args:
        shared: the entries in force, shared through the store.
        config: the policy file (clients' names, ``[abuse]`` bounds).
        hooks: where ``EntryAdded`` and ``EntryRemoved`` go (the abuse log, metrics).
    """

    def __init__(
        self, shared: SharedBans, config: GatewayConfig, hooks: Sequence[EventHook] = ()
    ) -> None:
        self.shared = shared
        self.config = config
        self.hooks = tuple(hooks)

    def subject_of(self, fields: Mapping[str, Any]) -> tuple[Action, list[tuple[Kind, str]]]:
        """The action and the subjects (a client's name may stand for several) of
        ``fields`` (Rule 1).

        Raises:
            ValueError: naming the field and what is expected.
        """
        action_text = fields.get("action", "ban")
        try:
            action = Action(action_text)
        except ValueError:
            raise ValueError("action: expected 'ban', 'allow', 'limit' or 'challenge'") from None
        given = [(name, fields[name]) for name in _SUBJECTS if fields.get(name) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(_SUBJECTS)}")
        name, value = given[0]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: expected a non-empty string")
        if name == "key":
            return action, [(Kind.PRINCIPAL, hash_credential(value.strip().encode()))]
        if name == "account":
            return action, [(Kind.ACCOUNT, account_hash(value, self.config.abuse_secret))]
        if name == "principal":
            owned = [p for p, client in self.config.principals.items() if client == value]
            if owned:
                return action, [(Kind.PRINCIPAL, p) for p in owned]
            if not value.startswith(("cred:", "user:", "addr:")):
                raise ValueError(
                    "principal: expected a [[clients]] name or a principal "
                    f"('cred:...', 'user:...', 'addr:...'), got {shown_value(value)}"
                )
        try:
            return action, [(Kind(name), subject(name, value))]
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def entries_of(self, fields: Mapping[str, Any], now: float) -> list[Entry]:
        """The entries ``fields`` ask for (Rules 1 to 3), not yet in force.

        Raises:
            ValueError: naming the field and what is expected.
        """
        action, subjects = self.subject_of(fields)
        abuse = self.config.root.abuse
        if action is Action.CHALLENGE and self.config.abuse.challenge is None:
            raise ValueError("action: a challenge needs an [abuse.challenge] table")
        if "duration" in fields and "until" in fields:
            raise ValueError("expected at most one of duration and until")
        until = math.inf
        if fields.get("duration") is not None:
            until = now + duration_seconds(fields["duration"])
        elif fields.get("until") is not None:
            value = fields["until"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("until: expected unix seconds")
            until = float(value) if abs(value) < 1e300 else math.inf
            if not (math.isfinite(until) and until > now):
                raise ValueError("until: expected a time in the future")
        if action is Action.BAN:
            if math.isinf(until) and abuse.require_expiry:
                raise ValueError(
                    "duration: required ([abuse] require_expiry says every ban must expire)"
                )
            if not math.isinf(until) and until - now > abuse.max_ban:
                raise ValueError(
                    f"duration: expected at most [abuse] max_ban ({abuse.max_ban:.0f} seconds)"
                )
        rate = 0.0
        if action is Action.LIMIT:
            rate_value = fields.get("rate")
            if (
                isinstance(rate_value, bool)
                or not isinstance(rate_value, int | float)
                or not (0 < rate_value < 1e9)
            ):
                raise ValueError("rate: expected requests per second > 0 for a limit")
            rate = float(rate_value)
        elif fields.get("rate") is not None:
            raise ValueError("rate: only a limit takes a rate")
        reason = _reason(fields)
        entries = [
            Entry(
                action=action,
                kind=kind,
                value=value,
                until=until,
                reason=reason,
                source="admin",
                at=now,
                rate=rate,
            )
            for kind, value in subjects
        ]
        for entry in entries:
            if self.shared.is_configured(entry.slot):
                raise ValueError(
                    f"{entry.kind.value} {entry.value}: this {entry.action.value} is in the "
                    "policy file; change it there (Rule 3)"
                )
        return entries

    async def add(self, fields: Mapping[str, Any], now: float, *, by: str) -> list[Entry]:
        """Put the entries ``fields`` ask for in force everywhere (Rule 4).

        Raises:
            ValueError: naming the field and what is expected.
            AbuseEntriesFull: the store's board for the subject is full.
        """
        entries = self.entries_of(fields, now)
        for entry in entries:
            try:
                await self.shared.put(entry)
            except ValueError as exc:  # checked before: only a full board is left
                raise AbuseEntriesFull() from exc
            emit(
                self.hooks,
                EntryAdded(
                    at=now,
                    request_id="",
                    action=entry.action.value,
                    kind=entry.kind.value,
                    subject=self._shown(entry),
                    until=entry.until,
                    duration=entry.until - now,
                    reason=entry.reason,
                    source=entry.source,
                    by=by,
                ),
            )
        return entries

    async def remove(self, fields: Mapping[str, Any], now: float, *, by: str) -> list[Entry]:
        """Lift the entries ``fields`` name (action and subject; Rule 4); those removed."""
        action, subjects = self.subject_of(fields)
        reason = _reason(fields)
        slots = [f"{action.value} {kind.value} {value}" for kind, value in subjects]
        for slot in slots:  # all checked before any is lifted
            if self.shared.is_configured(slot):
                raise ValueError(f"{slot}: it is in the policy file; change it there (Rule 3)")
        removed: list[Entry] = []
        for slot in slots:
            entry = await self.shared.remove(slot)
            if entry is None:
                continue
            removed.append(entry)
            emit(
                self.hooks,
                EntryRemoved(
                    at=now,
                    request_id="",
                    action=entry.action.value,
                    kind=entry.kind.value,
                    subject=self._shown(entry),
                    reason=reason,
                    by=by,
                ),
            )
        return removed

    def listing(
        self, now: float, *, action: Action | None = None, kind: Kind | None = None
    ) -> list[dict[str, Any]]:
        """The entries in force (the policy file's included), as the admin API and
        ``surefoot bans list --json`` show them."""
        found = self.shared.bans.entries(now, action=action, kind=kind)
        return [listed(entry, now, self.shared.is_configured(entry.slot)) for entry in found]

    def _shown(self, entry: Entry) -> str:
        abuse = self.config.root.abuse
        return shown(entry.kind.value, entry.value, abuse.addresses, self.config.abuse_secret)


def listed(entry: Entry, now: float, configured: bool) -> dict[str, Any]:
    """An entry as the admin API and ``surefoot bans list --json`` show it."""
    return {
        "action": entry.action.value,
        "kind": entry.kind.value,
        "value": entry.value,
        "until": None if math.isinf(entry.until) else round(entry.until, 3),
        "expires_in": None if math.isinf(entry.until) else round(entry.until - now, 3),
        "reason": entry.reason,
        "source": "config" if configured else entry.source,
        "offence": entry.offence,
        "rate": entry.rate,
        "at": round(entry.at, 3) if entry.at else None,  # None: the policy file's
    }


def by_of(value: object) -> str:
    """Who asked for an operator's change (``by``): 1 to 64 printable characters.

    Raises:
        ValueError: naming ``by``.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable():
        raise ValueError("by: expected 1 to 64 printable characters")
    return value


def _reason(fields: Mapping[str, Any]) -> str:
    """The ``reason`` of an operator's change: at most 200 printable characters."""
    reason = fields.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 200 or not reason.isprintable():
        raise ValueError("reason: expected at most 200 printable characters")
    return reason
