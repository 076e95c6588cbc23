"""``SharedBans``: one ``BanSet`` per worker, kept in step with every other through a store.

Every request is checked against the worker's own ``BanSet`` (a few dict lookups, no store
call); the entries themselves live in a ``BoardStore`` (memory, SQLite, Redis, PostgreSQL),
so every worker and every host sees every ban::

    abuse:bans:00 .. :63    the entries, one slot each (``Entry.slot``), by a hash of the slot
    abuse:stamps            one slot per shard: a new token at every change of it
    abuse:claims:00 .. :63  who made the n-th ban of a subject (``claim``)

Rule 1: a write puts the entry, then a new stamp for its shard; ``sync`` reads the stamps,
        then each shard whose stamp changed (all of them the first time). So a sync that
        sees a stamp sees at least every write made before it: a ban made on one worker
        is in force on every other after their next ``sync`` (``[abuse] sync_every``,
        1 second by default), and at once on the worker that made it.
Rule 2: an entry's slot is kept until ``max(until, forget_at)``: an expired ban stays as
        the subject's history (its ``offence``) for the growth of its next ban. A slot
        that expires, or is deleted, leaves every worker's set at its next sync.
Rule 3: ``claim`` makes the n-th ban of a subject once, whichever worker saw the failure
        first: it claims ``<slot>#<offence>`` before it writes the entry, so two workers
        crossing one threshold together write one ban and log it once.
Rule 4: the policy file's entries (``configure``) are the worker's own: the store never
        overwrites them, and ``put`` and ``remove`` refuse their slots.
Rule 5: a sync reads at most what changed: a shard's slots whose bytes are unchanged are
        not decoded again; a slot that does not decode is skipped (and logged once).
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from surefoot.abuse._bans import Action, BanSet, Entry
from surefoot.clock import Clock, SystemClock

if TYPE_CHECKING:
    from surefoot.metrics import BoardStore

__all__ = ["SharedBans"]

SHARDS = 64
#: How long an entry without expiry, or a shard's stamp, is kept by the store (10 years).
FOREVER = 10 * 365 * 86400.0
#: Seconds between two purges of the entries a worker no longer needs.
PURGE_EVERY = 60.0
_log = logging.getLogger("surefoot.abuse")


def shard_of(slot: str) -> int:
    """The shard holding ``slot``: the same in every process (never Python's ``hash``)."""
    return int.from_bytes(hashlib.blake2b(slot.encode(), digest_size=2).digest()) % SHARDS


class SharedBans:
    """The entries in force, shared through ``store`` (see the module's rules).

    Args:
        store: the board store every worker and host shares.
        clock: time for expiries and the store's calls.
        prefix: the boards' names start with it (one gateway's entries apart from another's).
    """

    def __init__(self, store: BoardStore, *, clock: Clock | None = None, prefix: str = "abuse"):
        self.store = store
        self.clock = clock if clock is not None else SystemClock()
        self.prefix = prefix
        self.bans = BanSet()
        self._config: dict[str, Entry] = {}
        self._raw: list[dict[str, bytes]] = [{} for _ in range(SHARDS)]
        self._stamps: dict[str, bytes] | None = None
        self._undecodable: set[str] = set()
        self._purged_at = -math.inf

    def configure(self, entries: Iterable[Entry]) -> None:
        """Put the policy file's entries in force, in place of the last ones (Rule 4)."""
        new = {entry.slot: entry for entry in entries}
        for slot in self._config.keys() - new.keys():
            self.bans.remove(slot)
            raw = self._raw[shard_of(slot)].get(slot)
            if raw is not None:  # the store's entry of that slot comes back
                self._decode_into(slot, raw)
        for entry in new.values():
            self.bans.put(entry)
        self._config = new

    def is_configured(self, slot: str) -> bool:
        """Whether ``slot`` is the policy file's (never changed through the store)."""
        return slot in self._config

    async def sync(self) -> bool:
        """Read what changed in the store since the last sync (Rule 1), and purge what the
        set no longer needs (once a minute: an expired entry never matches meanwhile);
        True if a shard changed."""
        now = self.clock.now()
        stamps = await self.store.board_read(f"{self.prefix}:stamps", now)
        last = self._stamps
        changed = False
        for shard in range(SHARDS):
            key = f"{shard:02d}"
            if last is not None and stamps.get(key) == last.get(key):
                continue
            slots = await self.store.board_read(f"{self.prefix}:bans:{key}", now)
            self._apply(shard, slots)
            changed = True
        self._stamps = stamps
        if now >= self._purged_at + PURGE_EVERY:
            self._purged_at = now
            self.bans.purge(now)
        return changed

    async def put(self, entry: Entry) -> None:
        """Put ``entry`` in force everywhere (Rule 1).

        Raises:
            ValueError: the slot is the policy file's, or the store's board is full.
            StoreUnavailable: the store failed (the entry may or may not be written).
        """
        self._refuse_configured(entry.slot)
        now = self.clock.now()
        shard = shard_of(entry.slot)
        value = entry.encode()
        await self.store.board_put(
            f"{self.prefix}:bans:{shard:02d}", entry.slot, value, _kept_until(entry, now), now
        )
        await self._stamp(shard, now)
        self._raw[shard][entry.slot] = value
        self.bans.put(entry)

    async def claim(self, entry: Entry, *, token: str | None = None) -> bool:
        """Put ``entry`` in force unless another worker already made this offence of its
        subject (Rule 3: ``token`` names what is made once, the offence by default); True
        if this call did."""
        now = self.clock.now()
        shard = shard_of(entry.slot)
        name = f"{entry.slot}#{entry.offence if token is None else token}"
        won = await self.store.board_claim(
            f"{self.prefix}:claims:{shard:02d}", name, b"1", _kept_until(entry, now), now
        )
        if won:
            await self.put(entry)
        return won

    async def remove(self, slot: str) -> Entry | None:
        """Take ``slot`` out of force everywhere; the entry lifted, or None if none was in
        force. A ban is kept as its subject's history (Rule 2: inactive from now, its
        offence remembered until its ``forget_at``), so lifting a ban neither resets the
        growth of the next one nor lets the failures that led to it count again.

        Raises:
            ValueError: the slot is the policy file's.
        """
        self._refuse_configured(slot)
        now = self.clock.now()
        entry = self.bans.get(slot)
        if entry is None or not entry.active(now):
            return None
        shard = shard_of(slot)
        if entry.action is Action.BAN and now < entry.forget_at:
            lifted = replace(entry, until=now)
            value = lifted.encode()
            board = f"{self.prefix}:bans:{shard:02d}"
            await self.store.board_put(board, slot, value, _kept_until(lifted, now), now)
            self._raw[shard][slot] = value
            self.bans.put(lifted)
        else:
            await self.store.board_delete(f"{self.prefix}:bans:{shard:02d}", slot, now)
            self._raw[shard].pop(slot, None)
            self.bans.remove(slot)
        await self._stamp(shard, now)
        return entry

    async def _stamp(self, shard: int, now: float) -> None:
        await self.store.board_put(
            f"{self.prefix}:stamps",
            f"{shard:02d}",
            secrets.token_hex(8).encode(),
            now + FOREVER,
            now,
        )

    def _refuse_configured(self, slot: str) -> None:
        if slot in self._config:
            raise ValueError(f"{slot!r} is in the policy file: change it there")

    def _apply(self, shard: int, slots: dict[str, bytes]) -> None:
        old = self._raw[shard]
        for slot in old.keys() - slots.keys():
            if slot not in self._config:
                self.bans.remove(slot)
        for slot, raw in slots.items():
            if old.get(slot) != raw and slot not in self._config:
                self._decode_into(slot, raw)
        self._raw[shard] = slots

    def _decode_into(self, slot: str, raw: bytes) -> None:
        try:
            entry = Entry.decode(raw)
        except ValueError:
            if slot not in self._undecodable:
                self._undecodable.add(slot)
                _log.warning("abuse: skipping an entry that does not decode (slot %r)", slot)
            return
        if entry.slot == slot:
            self.bans.put(entry)


def _kept_until(entry: Entry, now: float) -> float:
    """When the store may forget ``entry`` (Rule 2): never later than ``FOREVER``."""
    kept = max(entry.until, entry.forget_at, now + 1)
    return now + FOREVER if math.isinf(kept) or kept > now + FOREVER else kept
