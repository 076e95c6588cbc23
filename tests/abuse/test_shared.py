"""``SharedBans`` over every store: two workers' sets kept in step through the store."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _services import STORE_KINDS, store_url
from _support import T0
from surefoot.abuse import Action, Entry, Kind, SharedBans
from surefoot.abuse._shared import FULL_SYNC_EVERY, SHARDS, shard_of
from surefoot.storage import MemoryStore, store_from_url
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    kind: str = request.param
    options = "timeout=5" if kind in ("redis", "redis_cluster", "postgres") else ""
    async with store_url(kind, tmp_path, options=options) as url:
        s: Any = store_from_url(url)
        try:
            yield s
        finally:
            await s.aclose()


def ban(value: str, *, until: float = T0 + 600, offence: int = 1, **options: Any) -> Entry:
    return Entry(
        action=Action.BAN,
        kind=Kind.ADDRESS,
        value=value,
        until=until,
        at=T0,
        offence=offence,
        **options,
    )


async def test_a_ban_on_one_worker_holds_on_another_after_its_sync(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await two.sync()
    await one.put(ban("203.0.113.7", reason="tests"))
    assert one.bans.match(T0, "203.0.113.7") is not None  # at once where it was made
    assert two.bans.match(T0, "203.0.113.7") is None  # elsewhere: at the next sync
    await two.sync()
    found = two.bans.match(T0, "203.0.113.7")
    assert found is not None
    assert found.reason == "tests"
    # Lifted on one, gone from the other after its sync.
    assert await one.remove(found.slot) == found
    await two.sync()
    assert two.bans.match(T0, "203.0.113.7") is None
    assert await one.remove(found.slot) is None


async def test_a_ban_without_expiry_and_an_allow_are_shared(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await one.put(
        Entry(action=Action.BAN, kind=Kind.NETWORK, value="198.51.100.0/24", until=math.inf)
    )
    await one.put(
        Entry(action=Action.ALLOW, kind=Kind.ADDRESS, value="198.51.100.9", until=math.inf)
    )
    await two.sync()
    clock.advance(365 * 86400)
    await two.sync()
    assert two.bans.match(clock.now(), "198.51.100.7").action is Action.BAN  # type: ignore[union-attr]
    assert two.bans.match(clock.now(), "198.51.100.9").action is Action.ALLOW  # type: ignore[union-attr]


async def test_an_expired_ban_is_kept_as_history_until_forgotten(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    entry = ban("203.0.113.7", until=T0 + 60, forget_at=T0 + 3600)
    await one.put(entry)
    clock.advance(120)
    await two.sync()
    assert two.bans.match(clock.now(), "203.0.113.7") is None  # no longer in force
    assert two.bans.get(entry.slot) == entry  # but its offence is remembered
    clock.advance(3600)
    await two.sync()
    assert two.bans.get(entry.slot) is None


async def test_one_offence_is_claimed_by_one_worker(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    entry = ban("203.0.113.7")
    assert await one.claim(entry) is True
    assert await two.claim(entry) is False  # the same offence: made once
    assert two.bans.match(T0, "203.0.113.7") is None
    assert await two.claim(ban("203.0.113.7", offence=2)) is True  # the next one
    assert await one.claim(entry, token="another") is True


async def test_the_policy_file_s_entries_are_the_worker_s_own(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    stored = ban("203.0.113.7", reason="from the store")
    await one.put(stored)
    configured = ban("203.0.113.7", until=math.inf, reason="from the file", source="config")
    two.configure([configured])
    await two.sync()
    assert two.bans.get(stored.slot) == configured  # the store never overwrites it
    assert two.is_configured(stored.slot)
    with pytest.raises(ValueError, match="in the policy file"):
        await two.put(stored)
    with pytest.raises(ValueError, match="in the policy file"):
        await two.remove(stored.slot)
    two.configure([])  # the file no longer has it: the store's comes back
    assert two.bans.get(stored.slot) == stored
    two.configure([ban("192.0.2.1", source="config")])
    two.configure([])
    assert two.bans.get(ban("192.0.2.1").slot) is None


class Counting(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        self.reads.append(board)
        return await super().board_read(board, now)


async def test_a_sync_reads_only_the_shards_that_changed() -> None:
    store = Counting()
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await two.sync()
    assert len(store.reads) == 1 + SHARDS  # the first time: every shard
    store.reads.clear()
    await two.sync()
    assert store.reads == ["abuse:stamps"]  # nothing changed: the stamps only
    entry = ban("203.0.113.7")
    await one.put(entry)
    store.reads.clear()
    await two.sync()
    assert store.reads == ["abuse:stamps", f"abuse:bans:{shard_of(entry.slot):02d}"]


async def test_a_slot_that_does_not_decode_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    entry = ban("203.0.113.7")
    await one.put(entry)
    shard = f"abuse:bans:{shard_of(entry.slot):02d}"
    await store.board_put(shard, "ban address 192.0.2.1", b"{not json", T0 + 60, T0)
    await store.board_put(shard, "ban address 192.0.2.2", ban("192.0.2.3").encode(), T0 + 60, T0)
    await one.put(ban("192.0.2.9"))  # a new stamp for the shards written
    await store.board_put("abuse:stamps", shard[-2:], b"new", T0 + 60, T0)
    await two.sync()
    assert two.bans.get(entry.slot) == entry
    assert two.bans.match(T0, "192.0.2.1") is None
    assert two.bans.match(T0, "192.0.2.3") is None  # filed under another slot's name
    assert "does not decode" in caplog.text


async def test_a_lifted_ban_stays_as_history_on_every_worker(store: Any) -> None:
    clock = ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    entry = ban("203.0.113.7", until=T0 + 600, forget_at=T0 + 4000, offence=2)
    await one.put(entry)
    clock.advance(10)
    assert await one.remove(entry.slot) == entry
    await two.sync()
    kept = two.bans.get(entry.slot)
    assert kept is not None
    assert (kept.until, kept.offence, kept.active(clock.now())) == (T0 + 10, 2, False)
    assert two.bans.match(clock.now(), "203.0.113.7") is None
    assert await one.remove(entry.slot) is None  # nothing in force to lift


class Failing(MemoryStore):
    """Fails the next ``fail`` writes to boards whose name starts with ``board``."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0
        self.board = ""

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        if self.fail and board.startswith(self.board):
            self.fail -= 1
            raise ConnectionError("the store went away")
        await super().board_put(board, slot, value, expires_at, now)


async def test_a_claim_whose_entry_was_not_written_is_given_back() -> None:
    store, clock = Failing(), ManualClock(T0)
    shared = SharedBans(store, clock=clock)
    entry = ban("203.0.113.7")
    store.fail, store.board = 1, "abuse:bans:"
    with pytest.raises(ConnectionError):
        await shared.claim(entry)
    assert shared.bans.get(entry.slot) is None
    assert await shared.claim(entry) is True  # the next crossing bans
    assert await SharedBans(store, clock=clock).claim(entry) is False


async def test_a_stamp_that_failed_is_written_by_the_next_sync() -> None:
    store, clock = Failing(), ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await two.sync()
    store.fail, store.board = 1, "abuse:stamps"
    with pytest.raises(ConnectionError):
        await one.put(ban("203.0.113.7"))
    assert one.bans.match(T0, "203.0.113.7") is not None  # written, so in force here
    await two.sync()
    assert two.bans.match(T0, "203.0.113.7") is None  # no stamp yet
    await one.sync()  # stamps it
    await two.sync()
    assert two.bans.match(T0, "203.0.113.7") is not None


async def test_every_shard_is_read_again_now_and_then_whatever_the_stamps() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await two.sync()
    entry = ban("203.0.113.7", until=T0 + 2 * FULL_SYNC_EVERY)
    # Written behind the stamps' back (a stamp lost for good).
    shard = f"abuse:bans:{shard_of(entry.slot):02d}"
    await store.board_put(shard, entry.slot, entry.encode(), entry.until, T0)
    await two.sync()
    assert two.bans.get(entry.slot) is None
    clock.advance(FULL_SYNC_EVERY)
    await two.sync()
    assert two.bans.get(entry.slot) == entry
    assert one.bans.get(entry.slot) is None


async def test_a_sync_in_flight_never_undoes_a_write_of_the_same_worker() -> None:
    gate = asyncio.Event()

    class Slow(MemoryStore):
        async def board_read(self, board: str, now: float) -> dict[str, bytes]:
            found = await super().board_read(board, now)
            if board.startswith("abuse:bans:"):
                await gate.wait()
            return found

    store, clock = Slow(), ManualClock(T0)
    shared = SharedBans(store, clock=clock)
    syncing = asyncio.ensure_future(shared.sync())
    await asyncio.sleep(0)
    putting = asyncio.ensure_future(shared.put(ban("203.0.113.7")))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(syncing, putting)
    assert shared.bans.match(T0, "203.0.113.7") is not None


async def test_remove_lifts_what_the_store_holds_not_what_this_worker_saw() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    await two.sync()
    entry = ban("203.0.113.7", offence=4, forget_at=T0 + 90_000)
    await one.put(entry)
    assert await two.remove(entry.slot) == entry  # two never synced, and lifts it all the same
    await one.sync()
    kept = one.bans.get(entry.slot)
    assert kept is not None
    assert (kept.offence, kept.active(T0)) == (4, False)


async def test_an_expired_entry_of_the_policy_file_stands_in_no_one_s_way() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    shared = SharedBans(store, clock=clock)
    shared.configure([ban("198.51.100.9", until=T0 + 60, source="config")])
    with pytest.raises(ValueError, match="in the policy file"):
        await shared.put(ban("198.51.100.9", until=T0 + 600))
    clock.advance(120)
    later = ban("198.51.100.9", until=T0 + 600)
    await shared.put(later)
    assert shared.bans.match(clock.now(), "198.51.100.9") == later


async def test_a_subject_too_long_for_a_board_s_names_is_stored_under_a_hash() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    long = Entry(
        action=Action.CHALLENGE, kind=Kind.PRINCIPAL, value="user:" + "a" * 250, until=T0 + 60
    )
    assert await one.claim(long, token="1@1800000000") is True
    await two.sync()
    assert two.bans.match(T0, principals=[long.value]) == long
    assert await two.remove(long.slot) == long


async def test_a_full_board_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import surefoot.storage.memory as memory

    monkeypatch.setattr(memory, "MAX_SLOTS", 1)
    store, clock = MemoryStore(), ManualClock(T0)
    shared = SharedBans(store, clock=clock)
    first = ban("203.0.113.7")
    await shared.put(first)
    other = next(
        ban(f"198.51.{i // 256}.{i % 256}")
        for i in range(1, 60_000)
        if shard_of(ban(f"198.51.{i // 256}.{i % 256}").slot) == shard_of(first.slot)
    )
    with pytest.raises(ValueError, match="is full"):
        await shared.put(other)


async def test_counts_follow_changes_and_expiries() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    one, two = SharedBans(store, clock=clock), SharedBans(store, clock=clock)
    assert two.counts(T0)["ban", "address"] == 0
    await one.put(ban("203.0.113.7", until=T0 + 60))
    await one.put(ban("203.0.113.8", until=T0 + 120))
    assert two.counts(T0)["ban", "address"] == 0  # not synced yet
    await two.sync()
    assert two.counts(T0)["ban", "address"] == 2
    assert two.counts(T0 + 60)["ban", "address"] == 1  # one expired
    assert two.counts(T0 + 120)["ban", "address"] == 0
