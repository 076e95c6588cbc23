"""``SharedOverrides``: the temporary rate-limit overrides in force, shared by every worker
and host through the ``[rate_limit] store``'s boards, and their audit trail.

The values and how they change the policies are ``_overrides.py``'s (pure); this module
reads and writes them (``surefoot.metrics.BoardStore``, which has no compare-and-delete)::

    ratelimit:overrides         one slot per override, named by its id, written once and
                                never overwritten; kept by the store until its expires_at
    ratelimit:overrides:audit   one slot per change: "added <id>" (kept until 90 days
                                after the override's expiry) and "ended <id>" (removed,
                                replaced or expired; kept as long, or 90 days after the
                                end if that is later)
    ratelimit:overrides:events  "added <id>" and "ended <id>": who emitted each event

Rule 1: an override reverts by itself: its slot expires with it, so the store drops it at
        its ``expires_at`` even while every worker is down, and a worker never applies one
        past its expiry (``_overrides``, Rule 1).
Rule 2: a change is audited before it is made: ``add`` writes ``added <id>`` first, and a
        change whose audit cannot be written (the store is down, the audit board is full)
        is not made. An ``add`` whose slot could not be written deletes it again (it may
        have been written: a lost reply) and ends it in the audit; only then does it end
        the override it replaces, so a failed ``add`` leaves the old one in force and
        audited as such.
Rule 3: writes never overwrite each other: each override has its own slot, and of those
        of one target the later created wins (``_overrides``, Rule 4); ``add`` makes a
        new override created after the one it read in force (moving its ``starts_at`` on
        by the least amount when a clock says otherwise). A superseded
        override is ended as ``replaced by <id>`` by whoever sees it first (the ``add``
        that superseded it, or a ``sync``), then its slot is deleted. ``add`` reads the
        board again after its write: an ``add`` that lost to a concurrent, later-created
        one of its target, or whose write took the overrides in force past ``MAX_LIVE``
        (a concurrent ``add``), is withdrawn (ended, slot deleted) and refused.
Rule 4: every override ends in the audit exactly once: ``ended <id>`` is claimed
        (``board_claim``) by whoever ends it, an operator's ``remove``, a newer override of
        the same target, or the first worker to see it expired. A slot is deleted only
        once its override has ended (by whoever claimed it), and only by its id: a
        ``remove`` ends the overrides of its target that it read and deletes exactly
        their slots, so it never deletes one made meanwhile. A slot whose override ended
        but whose delete failed is deleted by the next sweep (Rule 6).
Rule 5: every worker ``sync``s every ``SYNC_EVERY`` seconds: it reads the board, and says
        whether the set of overrides in force changed (added, removed or expired), so the
        gateway applies them to its rate limiter without rebuilding anything. Between two
        syncs, ``expire`` (no store call) drops what has expired, so an override ends at
        its expiry on every worker whatever the sync's timing; its audit waits for the
        next sync. A sync whose read overlaps an ``add`` or ``remove`` of its own worker
        is discarded (the change counter moved), so it never undoes that change.
Rule 6: an expiry no worker saw (they were all down) is audited by the first sync after
        they are up: at its first sync and every ``SWEEP_EVERY`` seconds a worker reads the
        audit trail for overrides past their expiry without an end, and deletes the slots
        of overrides that ended.
Rule 7: each change is an event once, whoever made it: the emitter claims ``added <id>``
        or ``ended <id>`` on the events board first. A ``SharedOverrides`` without hooks
        (the CLI's) claims nothing, so a worker's sync emits ``OverrideAdded`` for an
        override it sees in force and ``OverrideRemoved`` (from the audit's record) for
        one it sees gone before its expiry; an override withdrawn before its
        ``OverrideAdded`` has no event at all.
Rule 8: a slot that does not decode is skipped (and logged once per slot), and so is an
        audit row that is not as written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.events import Event, EventHook, emit
from surefoot.gateway._abuse import _reason, by_of, duration_seconds
from surefoot.gateway._events import (
    OverrideAdded,
    OverrideEvent,
    OverrideExpired,
    OverrideRemoved,
)
from surefoot.gateway._overrides import (
    MAX_LIVE,
    MIN_DURATION,
    TemporaryOverride,
    apply_overrides,
    check_override,
    created,
    limits_of,
    live_overrides,
)

if TYPE_CHECKING:
    from surefoot.gateway._config import GatewayConfig
    from surefoot.metrics import BoardStore
    from surefoot.ratelimit import RateLimitPolicy

__all__ = [
    "AUDIT",
    "BOARD",
    "EVENTS",
    "FIELDS",
    "OverrideControl",
    "SharedOverrides",
    "override_of",
    "principals_of_client",
    "removal_of",
]

BOARD = "ratelimit:overrides"
AUDIT = "ratelimit:overrides:audit"
EVENTS = "ratelimit:overrides:events"
#: How long the audit trail keeps a change (90 days).
KEEP_AUDIT = 90 * 86400.0
#: Seconds between two reads of the board by each worker (Rule 4).
SYNC_EVERY = 1.0
#: Seconds between two reads of the audit trail for expiries no worker saw (Rule 5).
SWEEP_EVERY = 600.0
#: What an override is made of (the admin API's body, the CLI's options).
FIELDS = ("policy", "client", "limits", "for", "until", "reason", "by")
_log = logging.getLogger("surefoot.gateway")

Change = Literal["added", "removed", "expired"]


def principals_of_client(config: GatewayConfig) -> dict[str, list[str]]:
    """Each ``[[clients]]`` name -> its principals (none for a client whose key is unset)."""
    found: dict[str, list[str]] = {client.name: [] for client in config.root.clients}
    for principal, name in config.principals.items():
        found.setdefault(name, []).append(principal)
    return found


def override_of(fields: Mapping[str, Any], config: GatewayConfig, now: float) -> TemporaryOverride:
    """The override ``fields`` ask for, checked against ``config`` (``_overrides``, Rules 5
    and 6), not yet in force.

    ``fields``: ``policy``, ``client`` (optional: every client of the policy), ``limits``
    (a list), ``for`` (seconds or ``30m``, ``2h``, ``7d``) or ``until`` (unix seconds), at
    most ``[rate_limit] max_override`` from now, ``reason`` and ``by`` (required).

    Raises:
        ValueError: naming the field and what is expected.
    """
    policy, client, by, reason = removal_of(fields)
    limits = limits_of(fields.get("limits"))
    if ("for" in fields) == ("until" in fields):
        raise ValueError("for: expected one of for (e.g. 2h) and until (unix seconds)")
    if "for" in fields:
        expires_at = now + duration_seconds(fields["for"], "for")
        name = "for"
    else:
        value = fields["until"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("until: expected unix seconds")
        expires_at = float(value) if abs(value) < 1e300 else math.inf
        if not (math.isfinite(expires_at) and expires_at > now):
            raise ValueError("until: expected a time in the future")
        name = "until"
    most = config.root.rate_limit.max_override
    if expires_at - now < MIN_DURATION:
        raise ValueError(f"{name}: expected at least {MIN_DURATION:g} second from now")
    if expires_at - now > most:
        raise ValueError(f"{name}: expected at most [rate_limit] max_override ({most:.0f} seconds)")
    override = TemporaryOverride(
        id=uuid.uuid4().hex,
        policy=policy,
        client=client,
        limits=limits,
        starts_at=now,
        expires_at=expires_at,
        by=by,
        reason=reason,
    )
    check_override(config.rate_limit_policies, override, principals_of_client(config))
    return override


def removal_of(fields: Mapping[str, Any]) -> tuple[str, str | None, str, str]:
    """The ``policy``, ``client`` (None: the policy-wide override), ``by`` and ``reason``
    (both required) of a removal.

    Raises:
        ValueError: naming the field and what is expected.
    """
    policy = fields.get("policy")
    if not isinstance(policy, str) or not policy:
        raise ValueError("policy: expected a policy's name")
    client = fields.get("client")
    if client is not None and (not isinstance(client, str) or not client):
        raise ValueError("client: expected a [[clients]] name")
    reason = _reason(fields)
    if not reason:
        raise ValueError("reason: required: why the limit changes (in the audit trail)")
    if "by" not in fields:
        raise ValueError("by: required: who changes the limit (in the audit trail)")
    return policy, client, by_of(fields["by"]), reason


class SharedOverrides:
    """The overrides in force, shared through ``store`` (see the module's rules).

    Args:
        store: the board store every worker and host shares (the ``[rate_limit] store``).
        clock: time for expiries and the store's calls.
        hooks: where ``OverrideAdded``, ``OverrideRemoved`` and ``OverrideExpired`` go
            (none: the events are left to the workers' syncs, Rule 7).
    """

    def __init__(
        self,
        store: BoardStore,
        *,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] = (),
    ) -> None:
        self.store = store
        self.clock = clock if clock is not None else SystemClock()
        self.hooks = tuple(hooks)
        #: Target -> the override in force, as this worker last read it.
        self.live: dict[str, TemporaryOverride] = {}
        #: When the first of ``live`` expires (``math.inf``: none).
        self.next_expiry = math.inf
        self._ended: dict[str, TemporaryOverride] = {}  # expired, their audit not yet made
        self._announced: set[str] = set()  # ids whose OverrideAdded is settled (Rule 7)
        self._gone: dict[str, TemporaryOverride] = {}  # ended elsewhere, event not settled
        self._changes = 0  # add and remove changing ``live`` (Rule 5)
        self._swept_at = -math.inf
        self._undecodable: set[str] = set()

    def applied(self, config: GatewayConfig) -> list[RateLimitPolicy]:
        """``config``'s rate-limit policies with the overrides in force applied
        (``apply_overrides``); raises ``ConfigurationError`` when one cannot be."""
        live = self.live.values()
        if not live:
            return list(config.rate_limit_policies)
        principals = principals_of_client(config)
        return apply_overrides(config.rate_limit_policies, live, principals, now=self.clock.now())

    def policies(self, config: GatewayConfig) -> list[RateLimitPolicy]:
        """``applied``, or the file's own policies when an override cannot be applied
        (never expected: each was checked when it was made; logged)."""
        try:
            return self.applied(config)
        except ConfigurationError as exc:
            _log.error("overrides: not applied, the file's limits stay: %s", exc)
            return list(config.rate_limit_policies)

    async def refresh(self) -> bool:
        """``sync``, with a store that fails logged and those in force kept: True when
        the set in force changed."""
        try:
            return await self.sync()
        except Exception as exc:
            _log.warning("overrides: reading them failed: %s", type(exc).__name__)
            return False

    async def read(self, now: float) -> dict[str, TemporaryOverride]:
        """Target -> the override in force at ``now``, as the store has it."""
        return live_overrides((await self._slots(now)).values(), now)

    async def add(
        self, override: TemporaryOverride
    ) -> tuple[TemporaryOverride, TemporaryOverride | None]:
        """Put ``override`` in force everywhere (Rules 2 and 3), in place of its target's
        override; it as it is in force (created after the one it replaces: its
        ``starts_at`` is moved on by the least amount if it was not), and the override it
        replaced, if any.

        Raises:
            ValueError: ``MAX_LIVE`` overrides are in force, the audit trail is full, the
                override has expired already, or a concurrent later one of its target won.
            StoreUnavailable: the store failed (nothing is in force unless its audit is).
        """
        now = self.clock.now()
        if not override.live(now):
            raise ValueError(f"for: expected at least {MIN_DURATION:g} second from now")
        current = live_overrides((await self._slots(now)).values(), now)
        old = current.get(override.target)
        if old is None and len(current) >= MAX_LIVE:
            raise ValueError(_full())
        if old is not None and created(override) <= created(old):  # one instant, or a clock
            override = dataclasses.replace(
                override, starts_at=math.nextafter(old.starts_at, math.inf)
            )
        kept = max(now, override.expires_at) + KEEP_AUDIT
        record = _record("added", now, override, override.by, override.reason)
        try:
            await self.store.board_put(AUDIT, f"added {override.id}", record, kept, now)
        except ValueError:  # Rule 4 of boards: the trail holds 10,000 changes
            raise ValueError("the audit trail is full: too many changes in 90 days") from None
        try:
            await self.store.board_put(
                BOARD, override.id, override.encode(), override.expires_at, now
            )
        except Exception:
            await self._unmade(override, now)
            raise
        # Rule 3: what else is in force now; of a target, the later created wins.
        slots = await self._slots(now)
        live = live_overrides(slots.values(), now)
        winner = live.get(override.target)
        if override.id not in slots:  # a concurrent remove ended it already
            return override, None
        if winner is not None and winner.id != override.id:
            why = f"replaced by {winner.id}"
            await self._withdraw(override, now, by=winner.by, reason=why)
            raise ValueError(
                f"policy: a later override of {override.target} ({winner.id}, by "
                f"{winner.by}) was made at the same time and is in force instead of this one"
            )
        if len(live) > MAX_LIVE and override.target not in current:  # a concurrent add
            await self._withdraw(override, now, by=override.by, reason=f"withdrawn: {_full()}")
            raise ValueError(_full())
        self._put(override, now)
        older = [
            o
            for o in slots.values()
            if o.target == override.target and created(o) < created(override)
        ]
        replaced = max(older, key=created) if older else None
        why = f"replaced by {override.id}"
        for old in older:  # superseded: ended, then deleted (Rule 4)
            await self._end(old, "removed", now, by=override.by, reason=why)
            await self.store.board_delete(BOARD, old.id, now)
        added = _event(
            OverrideAdded,
            override,
            now,
            by=override.by,
            reason=override.reason,
            replaced=replaced.id if replaced is not None else None,
        )
        await self._announce(f"added {override.id}", override, added)
        self._announced.add(override.id)
        return override, replaced

    async def remove(
        self, policy: str, client: str | None, *, by: str, reason: str
    ) -> TemporaryOverride | None:
        """End the override of ``policy`` and ``client`` (None: the policy-wide one) now,
        everywhere (Rule 4); the override ended, or None if none was in force (or another
        operator ended it meanwhile)."""
        now = self.clock.now()
        target = f"{policy} {'*' if client is None else client}"
        slots = await self._slots(now)
        read = sorted((o for o in slots.values() if o.target == target), key=created)
        if not read:
            return None
        override = read[-1]
        ended = await self._end(override, "removed", now, by=by, reason=reason)
        why = f"replaced by {override.id}"
        for old in read[:-1]:  # superseded by it: never in force again once it is gone
            await self._end(old, "removed", now, by=override.by, reason=why)
        for gone in read:  # each ended now, by this call or another: exactly these slots
            await self.store.board_delete(BOARD, gone.id, now)
        if self.live.get(target) in read:
            del self.live[target]
        self._changes += 1  # a sync that read before the delete is discarded (Rule 5)
        self._changed(now)
        return override if ended else None

    async def sync(self) -> bool:
        """Read the board (Rule 5), audit the expiries seen and end the superseded (Rules 3,
        4 and 6), emit the events of changes made elsewhere (Rule 7); True if the set of
        overrides in force changed."""
        now = self.clock.now()
        changes = self._changes
        trail: dict[str, dict[str, Any]] | None = None
        if now >= self._swept_at + SWEEP_EVERY:
            try:
                trail = await self._trail(now)
            except Exception as exc:
                _log.warning("overrides: reading the audit trail failed: %s", type(exc).__name__)
        slots = await self._slots(now)
        if self._changes != changes:  # an add or a remove of this worker ran meanwhile
            return False
        ended = set() if trail is None else {n[6:] for n in trail if n.startswith("ended ")}
        finished = [o for o in slots.values() if o.id in ended]  # Rule 4: a delete failed
        found = live_overrides((o for o in slots.values() if o.id not in ended), now)
        ids = {o.id for o in slots.values()}
        gone = self._gone if self.hooks else {}
        for target, old in self.live.items():
            new = found.get(target)
            if new is not None and new.id == old.id:
                continue
            if not old.live(now):
                self._ended[old.id] = old
            elif old.id not in ids or old.id in ended:
                gone[old.id] = old  # removed, or replaced and deleted, before its expiry
        winners = {o.id for o in found.values()}
        superseded = [o for o in slots.values() if o.id not in winners and o.id not in ended]
        before = self.live
        changed = {t: o.id for t, o in found.items()} != {t: o.id for t, o in before.items()}
        self.live = found
        self._changed(now)
        self._announced &= winners
        try:  # what is in force is decided: an audit that fails is made at the next sync
            for old in finished:
                await self.store.board_delete(BOARD, old.id, now)
            for old in superseded:
                winner = found[old.target]
                why = f"replaced by {winner.id}"
                await self._end(old, "removed", now, by=winner.by, reason=why)
                await self.store.board_delete(BOARD, old.id, now)
            for override in list(self._ended.values()):
                await self._end(override, "expired", override.expires_at, by=override.by)
                del self._ended[override.id]
            if trail is not None:
                await self._sweep(trail, now)
                self._swept_at = now
            if self.hooks:
                await self._announce_elsewhere(found, before, trail, now)
        except Exception as exc:
            _log.warning("overrides: auditing a change failed: %s", type(exc).__name__)
        return changed

    def expire(self, now: float) -> bool:
        """Drop what has expired by ``now`` (no store call: Rule 5); True if anything did."""
        if now < self.next_expiry:
            return False
        for target, override in list(self.live.items()):
            if not override.live(now):
                self._ended[override.id] = override
                del self.live[target]
        self._changed(now)
        return True

    async def audit(self, now: float) -> list[dict[str, Any]]:
        """The audit trail, oldest first: each change, who made it and why."""
        return sorted((await self._trail(now)).values(), key=_order)

    async def _slots(self, now: float) -> dict[str, TemporaryOverride]:
        """Id -> override, every one the board has live at ``now``; a slot that does not
        decode, or is not named by its override's id, is skipped (Rule 8)."""
        found = {}
        for name, raw in (await self.store.board_read(BOARD, now)).items():
            try:
                override = TemporaryOverride.decode(raw)
                if override.id != name:
                    raise ValueError("a slot is named by its override's id")
            except ValueError:
                if name not in self._undecodable:
                    self._undecodable.add(name)
                    _log.warning("overrides: skipping a slot that does not decode (%r)", name)
                continue
            if override.live(now):
                found[name] = override
        return found

    async def _trail(self, now: float) -> dict[str, dict[str, Any]]:
        """Audit slot -> its row, each as ``_record`` wrote it (Rule 8)."""
        rows = {}
        for name, raw in (await self.store.board_read(AUDIT, now)).items():
            row = _row_of(raw)
            if row is not None:
                rows[name] = row
        return rows

    async def _end(
        self,
        override: TemporaryOverride,
        change: Change,
        at: float,
        *,
        by: str,
        reason: str | None = None,
    ) -> bool:
        """Claim ``ended <id>`` (Rule 4) and emit the event if this call did (Rule 7)."""
        now = self.clock.now()
        why = override.reason if reason is None else reason
        record = _record(change, at, override, by, why)
        name = f"ended {override.id}"
        kept = max(now, override.expires_at) + KEEP_AUDIT
        if not await self.store.board_claim(AUDIT, name, record, kept, now):
            return False
        event = OverrideExpired if change == "expired" else OverrideRemoved
        await self._announce(name, override, _event(event, override, at, by=by, reason=why))
        return True

    async def _announce(self, name: str, override: TemporaryOverride, event: Event) -> bool:
        """Emit ``event`` if this call claims ``name`` on the events board (Rule 7); a
        store that fails leaves it to the next sync that sees the change."""
        if not self.hooks:
            return False
        now = self.clock.now()
        kept = max(now, override.expires_at) + SWEEP_EVERY
        try:
            if not await self.store.board_claim(EVENTS, name, b"1", kept, now):
                return False
        except Exception as exc:
            _log.warning("overrides: claiming an event failed: %s", type(exc).__name__)
            return False
        emit(self.hooks, event)
        return True

    async def _announce_elsewhere(
        self,
        found: Mapping[str, TemporaryOverride],
        before: Mapping[str, TemporaryOverride],
        trail: Mapping[str, dict[str, Any]] | None,
        now: float,
    ) -> None:
        """The events of the changes another process made, once (Rule 7); a store that
        fails leaves the rest to the next sync."""
        for target, override in found.items():
            if override.id in self._announced:
                continue
            old = before.get(target)
            replaced = old.id if old is not None and old.id != override.id else None
            event = _event(
                OverrideAdded,
                override,
                now,
                by=override.by,
                reason=override.reason,
                replaced=replaced,
            )
            if await self._claim_event(f"added {override.id}", override, now):
                emit(self.hooks, event)
            self._announced.add(override.id)
        for old in list(self._gone.values()):
            name = f"ended {old.id}"
            if await self._claim_event(name, old, now):
                if trail is None:
                    trail = await self._trail(now)
                row = trail.get(name)
                if row is None:  # never ended in the audit: the sweep ends it at its expiry
                    await self.store.board_delete(EVENTS, name, now)
                else:
                    kind = OverrideExpired if row["change"] == "expired" else OverrideRemoved
                    by, reason = row["by"], row["reason"]
                    emit(self.hooks, _event(kind, old, row["at"], by=by, reason=reason))
            del self._gone[old.id]

    async def _unmade(self, override: TemporaryOverride, now: float) -> None:
        """After a failed write of ``override``'s slot: delete it (a lost reply may have
        written it), then end it in the audit (Rule 2); a store still failing leaves both
        to the syncs and the sweep."""
        try:
            await self.store.board_delete(BOARD, override.id, now)
            reason = "withdrawn: the store failed while it was added"
            await self._withdraw(override, now, by=override.by, reason=reason)
        except Exception as exc:
            _log.warning("overrides: withdrawing a failed add failed: %s", type(exc).__name__)

    async def _withdraw(
        self, override: TemporaryOverride, now: float, *, by: str, reason: str
    ) -> None:
        """End ``override``, which this call added, then delete its slot (Rules 3 and 4);
        no event if no ``OverrideAdded`` was emitted for it (Rule 7)."""
        if self.hooks and await self._claim_event(f"added {override.id}", override, now):
            await self._claim_event(f"ended {override.id}", override, now)  # never announced
        await self._end(override, "removed", now, by=by, reason=reason)
        await self.store.board_delete(BOARD, override.id, now)

    async def _claim_event(self, name: str, override: TemporaryOverride, now: float) -> bool:
        kept = max(now, override.expires_at) + SWEEP_EVERY
        return await self.store.board_claim(EVENTS, name, b"1", kept, now)

    async def _sweep(self, trail: Mapping[str, dict[str, Any]], now: float) -> None:
        """End in the audit what expired while no worker saw it (Rule 6)."""
        for name, row in trail.items():
            if not name.startswith("added ") or f"ended {name[6:]}" in trail:
                continue
            try:
                override = TemporaryOverride.decode(json.dumps(row["override"]).encode())
            except ValueError:
                continue
            if not override.live(now):
                await self._end(override, "expired", override.expires_at, by=override.by)

    def _put(self, override: TemporaryOverride, now: float) -> None:
        self.live[override.target] = override
        self._changes += 1  # a sync that read before the write is discarded (Rule 5)
        self._changed(now)

    def _changed(self, now: float) -> None:
        self.next_expiry = min((o.expires_at for o in self.live.values()), default=math.inf)


class OverrideControl:
    """Makes and ends overrides for an operator (the admin API, ``surefoot overrides``),
    checked against the policy file (``override_of``, ``removal_of``).

    Args:
        shared: the overrides in force, shared through the store.
        config: the policy file (its policies, clients and ``[rate_limit] max_override``).
    """

    def __init__(self, shared: SharedOverrides, config: GatewayConfig) -> None:
        self.shared = shared
        self.config = config

    async def add(
        self, fields: Mapping[str, Any]
    ) -> tuple[TemporaryOverride, TemporaryOverride | None]:
        """Put the override ``fields`` ask for in force; it, and the one it replaced.

        Raises:
            ValueError: naming the field and what is expected.
            StoreUnavailable: the store failed.
        """
        override = override_of(fields, self.config, self.shared.clock.now())
        return await self.shared.add(override)

    async def remove(self, fields: Mapping[str, Any]) -> TemporaryOverride | None:
        """End the override ``fields`` name now; None if none was in force.

        Raises:
            ValueError: naming the field and what is expected.
            StoreUnavailable: the store failed.
        """
        policy, client, by, reason = removal_of(fields)
        return await self.shared.remove(policy, client, by=by, reason=reason)

    async def listing(self) -> list[dict[str, Any]]:
        """The overrides in force, as the store has them, by target."""
        now = self.shared.clock.now()
        live = sorted((await self.shared.read(now)).values(), key=lambda o: o.target)
        return [override.listed(now) for override in live]

    async def audit(self) -> list[dict[str, Any]]:
        """The audit trail, oldest first (``SharedOverrides.audit``)."""
        return await self.shared.audit(self.shared.clock.now())


def _full() -> str:
    return f"expected at most {MAX_LIVE} overrides in force: remove one first"


def _row_of(raw: bytes) -> dict[str, Any] | None:
    """An audit slot's row as ``_record`` wrote it, or None (Rule 8)."""
    try:
        row = json.loads(raw)
    except ValueError:
        return None
    if not (
        isinstance(row, dict)
        and row.get("change") in ("added", "removed", "expired")
        and isinstance(row.get("at"), int | float)
        and isinstance(row.get("by"), str)
        and isinstance(row.get("reason"), str)
        and isinstance(row.get("override"), dict)
    ):
        return None
    try:
        TemporaryOverride.decode(json.dumps(row["override"]).encode())
    except ValueError:
        return None
    return row


def _order(row: dict[str, Any]) -> tuple[float, int]:
    """The audit's order: by time; at one instant, the end of an older override (one it
    replaced), then the additions, then the end of an override made at that instant."""
    at = row["at"]
    if row["change"] == "added":
        return at, 1
    return at, 0 if row["override"]["starts_at"] < at else 2


def _record(change: Change, at: float, override: TemporaryOverride, by: str, reason: str) -> bytes:
    """An audit slot's value: the change, when, who, why, and the override itself."""
    data = {
        "change": change,
        "at": round(at, 3),
        "by": by,
        "reason": reason,
        "override": json.loads(override.encode()),
    }
    return json.dumps(data, separators=(",", ":")).encode()


def _event(
    kind: type[OverrideEvent],
    override: TemporaryOverride,
    at: float,
    *,
    by: str,
    reason: str,
    **extra: Any,
) -> OverrideEvent:
    return kind(
        at=at,
        request_id="",
        override_id=override.id,
        policy=override.policy,
        client=override.client,
        limits=override.limits,
        expires_at=override.expires_at,
        by=by,
        reason=reason,
        **extra,
    )
