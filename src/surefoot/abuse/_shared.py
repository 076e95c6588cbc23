"""``SharedBans``: one ``BanSet`` per worker, kept in step with every other through a store.

Every request is checked against the worker's own ``BanSet`` (a few dict lookups, no store
call); the entries themselves live in a ``BoardStore`` (memory, SQLite, Redis, PostgreSQL),
so every worker and every host sees every ban::

    abuse:bans:00 .. :63    the entries, one slot each, by a hash of the slot
    abuse:stamps            one slot per shard: a new token at every change of it
    abuse:claims:00 .. :63  who made the n-th ban of a subject (``claim``)

Rule 1: a write puts the entry, then a new stamp for its shard; ``sync`` reads the stamps,
        then each shard whose stamp changed (all of them the first time, and again every
        ``FULL_SYNC_EVERY`` seconds whatever the stamps say, decoding only what changed).
        So a sync that sees a stamp sees at least every write made before it: a ban made
        on one worker is in force on every other after their next ``sync`` (``[abuse]
        sync_every``, 1 second by default), and at once on the worker that made it. A
        stamp that could not be written is written again by the next sync.
Rule 2: an entry's slot is kept until ``max(until, forget_at)``: an expired ban stays as
        the subject's history (its ``offence``) for the growth of its next ban, and so
        does a lifted one (``remove``). A slot that expires, or is deleted, leaves every
        worker's set at its next read of its shard.
Rule 3: ``claim`` makes the n-th ban of a subject once, whichever worker saw the failure
        first: it claims ``<slot>#<token>`` before it writes the entry, so two workers
        crossing one threshold together write one ban and log it once. A claim whose
        entry could not be written is given back, so the next crossing bans.
Rule 4: the policy file's entries (``configure``) are the worker's own while they are in
        force: the store never overwrites them, and ``put`` and ``remove`` refuse their
        slots. One that expired no longer stands in the way.
Rule 5: a sync reads at most what changed: a shard's slots whose bytes are unchanged are
        not decoded again; a slot that does not decode is skipped (and logged once).
Rule 6: one change at a time per worker: ``sync``, ``put``, ``claim`` and ``remove`` hold
        one lock, so a shard read before a local write never undoes it. ``remove`` reads
        the slot's shard from the store first: it lifts what is in force everywhere, not
        what this worker last saw.
Rule 7: a slot's name in the store is the entry's slot, or a hash of it when it is too
        long for a board's names (``surefoot._board``: 256 characters, with room left for a
        claim's suffix).
"""

from __future__ import annotations

import asyncio
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
#: Seconds between two purges of the entries a worker no longer needs (a purge visits
#: every entry: 30 ms for 100,000).
PURGE_EVERY = 600.0
#: Seconds between two reads of every shard, whatever the stamps say (Rule 1).
FULL_SYNC_EVERY = 3600.0
#: The longest slot name written as it is (Rule 7): a claim adds ``#<offence>@<time>``.
_NAME = 200
_log = logging.getLogger("surefoot.abuse")


def shard_of(slot: str) -> int:
    """The shard holding ``slot``: the same in every process (never Python's ``hash``)."""
    return int.from_bytes(hashlib.blake2b(slot.encode(), digest_size=2).digest()) % SHARDS


def stored_name(slot: str) -> str:
    """``slot``'s name in the store (Rule 7)."""
    if len(slot) <= _NAME:
        return slot
    return "h:" + hashlib.blake2b(slot.encode(), digest_size=20).hexdigest()


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
        # Per shard: stored name -> the bytes last read or written (Rule 5).
        self._raw: list[dict[str, bytes]] = [{} for _ in range(SHARDS)]
        self._stamps: dict[str, bytes] | None = None
        self._unstamped: set[int] = set()
        self._undecodable: set[str] = set()
        self._purged_at = -math.inf
        self._read_all_at = -math.inf
        self._lock = asyncio.Lock()
        # counts(): the last answer, the changes it saw, and until when it holds.
        self._changes = 0
        self._counted: tuple[int, float, dict[tuple[str, str], int]] | None = None

    def configure(self, entries: Iterable[Entry]) -> None:
        """Put the policy file's entries in force, in place of the last ones (Rule 4)."""
        new = {entry.slot: entry for entry in entries}
        old, self._config = self._config, new
        for slot in old.keys() - new.keys():
            self.bans.remove(slot)
            raw = self._raw[shard_of(slot)].get(stored_name(slot))
            if raw is not None:  # the store's entry of that slot comes back
                self._decode_into(raw)
        for entry in new.values():
            self.bans.put(entry)
        self._changes += 1

    def counts(self, now: float) -> dict[tuple[str, str], int]:
        """``BanSet.counts``, computed again only when an entry changed or expired since
        the last call (a count visits every entry: 60 ms for 100,000)."""
        cached = self._counted
        if cached is not None and cached[0] == self._changes and now < cached[1]:
            return cached[2]
        counts = self.bans.counts(now)
        active = (e.until for e in self.bans.entries(now))
        self._counted = (self._changes, min(active, default=math.inf), counts)
        return counts

    def is_configured(self, slot: str) -> bool:
        """Whether ``slot`` is the policy file's, in force (Rule 4)."""
        entry = self._config.get(slot)
        return entry is not None and entry.active(self.clock.now())

    async def sync(self) -> bool:
        """Read what changed in the store since the last sync (Rule 1), and purge what the
        set no longer needs (once a minute: an expired entry never matches meanwhile);
        True if a shard changed."""
        async with self._lock:
            now = self.clock.now()
            for shard in sorted(self._unstamped):
                await self._stamp(shard, now)
            stamps = await self.store.board_read(f"{self.prefix}:stamps", now)
            last = self._stamps
            whole = now >= self._read_all_at + FULL_SYNC_EVERY
            if whole:
                self._read_all_at = now
            changed = False
            for shard in range(SHARDS):
                key = f"{shard:02d}"
                if not whole and last is not None and stamps.get(key) == last.get(key):
                    continue
                slots = await self.store.board_read(self._board(shard), now)
                changed = self._apply(shard, slots, whole=whole) or changed
            self._stamps = stamps
            if now >= self._purged_at + PURGE_EVERY:
                self._purged_at = now
                self._changes += bool(self.bans.purge(now))
            return changed

    async def put(self, entry: Entry) -> None:
        """Put ``entry`` in force everywhere (Rule 1).

        Raises:
            ValueError: the slot is the policy file's, or the store's board is full.
            StoreUnavailable: the store failed (the entry may or may not be written).
        """
        async with self._lock:
            await self._put(entry)

    async def claim(self, entry: Entry, *, token: str | None = None) -> bool:
        """Put ``entry`` in force unless another worker already made this offence of its
        subject (Rule 3: ``token`` names what is made once, the offence by default); True
        if this call did.

        Raises:
            ValueError, StoreUnavailable: as ``put`` (the claim is given back).
        """
        async with self._lock:
            self._refuse_configured(entry.slot)
            now = self.clock.now()
            board = f"{self.prefix}:claims:{shard_of(entry.slot):02d}"
            name = f"{stored_name(entry.slot)}#{entry.offence if token is None else token}"
            kept = _kept_until(entry, now)
            if not await self.store.board_claim(board, name, b"1", kept, now):
                return False
            try:
                await self._put(entry)
            except BaseException:
                try:
                    await self.store.board_delete(board, name, now)
                except Exception:  # the store is down: the claim expires with the entry
                    _log.warning("abuse: a claim could not be given back (%s)", name)
                raise
            return True

    async def remove(self, slot: str) -> Entry | None:
        """Take ``slot`` out of force everywhere (Rule 6: as the store has it); the entry
        lifted, or None if none was in force. A ban is kept as its subject's history (Rule
        2: inactive from now, its offence remembered until its ``forget_at``), so lifting
        a ban neither resets the growth of the next one nor lets the failures that led to
        it count again.

        Raises:
            ValueError: the slot is the policy file's.
        """
        async with self._lock:
            self._refuse_configured(slot)
            now = self.clock.now()
            shard = shard_of(slot)
            self._apply(shard, await self.store.board_read(self._board(shard), now))
            entry = self.bans.get(slot)
            if entry is None or not entry.active(now):
                return None
            if entry.action is Action.BAN and now < entry.forget_at:
                await self._write(replace(entry, until=now), now)
            else:
                name = stored_name(slot)
                await self.store.board_delete(self._board(shard), name, now)
                self._raw[shard].pop(name, None)
                self.bans.remove(slot)
                self._changes += 1
                await self._stamp(shard, now)
            return entry

    async def _put(self, entry: Entry) -> None:
        self._refuse_configured(entry.slot)
        await self._write(entry, self.clock.now())

    async def _write(self, entry: Entry, now: float) -> None:
        """Write ``entry``, put it in force here, then stamp its shard (Rule 1)."""
        shard = shard_of(entry.slot)
        name, value = stored_name(entry.slot), entry.encode()
        await self.store.board_put(self._board(shard), name, value, _kept_until(entry, now), now)
        self._raw[shard][name] = value
        self.bans.put(entry)
        self._changes += 1
        await self._stamp(shard, now)

    async def _stamp(self, shard: int, now: float) -> None:
        self._unstamped.add(shard)  # until it is written (Rule 1)
        token = secrets.token_hex(8).encode()
        await self.store.board_put(
            f"{self.prefix}:stamps", f"{shard:02d}", token, now + FOREVER, now
        )
        self._unstamped.discard(shard)

    def _board(self, shard: int) -> str:
        return f"{self.prefix}:bans:{shard:02d}"

    def _refuse_configured(self, slot: str) -> None:
        if self.is_configured(slot):
            raise ValueError(f"{slot!r} is in the policy file: change it there")

    def _apply(self, shard: int, slots: dict[str, bytes], *, whole: bool = False) -> bool:
        """Make the shard's entries those of ``slots`` (its stored names -> values),
        decoding only what changed, and on a ``whole`` read what a policy file's entry
        that expired meanwhile stood over (Rule 4); True if anything changed."""
        old = self._raw[shard]
        changed = False
        for name in old.keys() - slots.keys():
            entry = _decoded(old[name])
            if entry is not None and not self.is_configured(entry.slot):
                self.bans.remove(entry.slot)
                changed = True
        for name, raw in slots.items():
            if old.get(name) != raw or (whole and self._overshadowed(name)):
                changed = self._decode_into(raw, name) or changed
        self._raw[shard] = slots
        self._changes += changed
        return changed

    def _overshadowed(self, name: str) -> bool:
        """Whether the stored entry ``name`` was hidden by a policy file's entry that has
        expired since (so it was never put in force)."""
        entry = self._config.get(name)
        return entry is not None and not entry.active(self.clock.now())

    def _decode_into(self, raw: bytes, name: str | None = None) -> bool:
        entry = _decoded(raw)
        if entry is None or (name is not None and stored_name(entry.slot) != name):
            if name is not None and name not in self._undecodable:
                self._undecodable.add(name)
                _log.warning("abuse: skipping an entry that does not decode (slot %r)", name)
            return False
        if self.is_configured(entry.slot):
            return False
        self.bans.put(entry)
        return True


def _decoded(raw: bytes) -> Entry | None:
    try:
        return Entry.decode(raw)
    except ValueError:
        return None


def _kept_until(entry: Entry, now: float) -> float:
    """When the store may forget ``entry`` (Rule 2): never later than ``FOREVER``."""
    kept = max(entry.until, entry.forget_at, now + 1)
    return now + FOREVER if math.isinf(kept) or kept > now + FOREVER else kept
