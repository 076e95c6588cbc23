"""The shared board's contract (``surefoot.metrics``' ``BoardStore``), run over every store.

Puts, claims, reads and deletes at explicit ``now`` values on the caller's clock; the
bounds of ``surefoot._board``; expired slots never read back and never piling up; and
claims of one slot by several OS processes at once, of which exactly one wins.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from _services import STORE_KINDS, store_url, store_url_sync
from _support import T0
from surefoot._board import MAX_NAME, MAX_SLOTS, MAX_VALUE
from surefoot.metrics._board import BoardStore
from surefoot.storage import MemoryStore, SqliteStore, store_from_url
from surefoot.storage.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

TTL = 60.0


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


async def test_every_store_is_a_board_store(store: Any) -> None:
    assert isinstance(store, BoardStore)


async def test_put_overwrites_and_read_returns_every_live_slot(store: Any) -> None:
    assert await store.board_read("top", T0) == {}
    await store.board_put("top", "w1", b"one", T0 + TTL, T0)
    await store.board_put("top", "w2", b"two", T0 + TTL, T0)
    await store.board_put("other", "w1", b"elsewhere", T0 + TTL, T0)
    assert await store.board_read("top", T0 + 1) == {"w1": b"one", "w2": b"two"}
    # A worker flushing its slot again replaces its value: nothing adds up.
    await store.board_put("top", "w1", b"one again", T0 + 2 + TTL, T0 + 2)
    assert await store.board_read("top", T0 + 3) == {"w1": b"one again", "w2": b"two"}
    assert await store.board_read("other", T0 + 3) == {"w1": b"elsewhere"}


async def test_values_come_back_byte_for_byte(store: Any) -> None:
    values = {
        "empty": b"",
        "binary": bytes(range(256)) * 4,
        "bar": b"|1e308|",
        "big": b"x" * 70_000,
    }
    for slot, value in values.items():
        await store.board_put("bytes", slot, value, T0 + TTL, T0)
    assert await store.board_read("bytes", T0) == values


async def test_odd_names_are_names_like_any_other(store: Any) -> None:
    names = ["e", "s", "s:e", "{tag}", "a b|c", "%.17g", "x" * MAX_NAME]
    for n, name in enumerate(names):
        await store.board_put(name, name, str(n).encode(), T0 + TTL, T0)
    for n, name in enumerate(names):
        assert await store.board_read(name, T0) == {name: str(n).encode()}


async def test_a_slot_expires_at_its_expires_at(store: Any) -> None:
    await store.board_put("b", "short", b"s", T0 + 10, T0)
    await store.board_put("b", "long", b"l", T0 + 20, T0)
    assert await store.board_read("b", T0 + 10 - 0.001) == {"short": b"s", "long": b"l"}
    assert await store.board_read("b", T0 + 10) == {"long": b"l"}
    assert await store.board_read("b", T0 + 20) == {}
    # Gone means gone: it never comes back, even when read again with the same now.
    assert await store.board_read("b", T0 + 20) == {}
    # An overwrite with a shorter expiry is honoured.
    await store.board_put("b", "long", b"l2", T0 + 25, T0 + 21)
    await store.board_put("b", "long", b"l3", T0 + 23, T0 + 22)
    assert await store.board_read("b", T0 + 23) == {}


async def test_claim_sets_a_slot_only_when_it_has_no_live_value(store: Any) -> None:
    assert await store.board_claim("sent", "fp1", b"worker-1", T0 + TTL, T0)
    assert not await store.board_claim("sent", "fp1", b"worker-2", T0 + TTL, T0 + 1)
    assert await store.board_read("sent", T0 + 1) == {"fp1": b"worker-1"}
    # Expired: as good as absent.
    assert await store.board_claim("sent", "fp1", b"worker-2", T0 + 2 * TTL, T0 + TTL)
    assert await store.board_read("sent", T0 + TTL) == {"fp1": b"worker-2"}
    # A put's slot is live too; a put overwrites a claimed one. (Time only moves on: a
    # store's purge, run in the background at the latest time it was given, may remove
    # what expired by then.)
    later = T0 + TTL
    await store.board_put("sent", "fp2", b"put", later + TTL, later)
    assert not await store.board_claim("sent", "fp2", b"claim", later + TTL, later + 1)
    await store.board_put("sent", "fp1", b"put", later + TTL, later + 1)
    assert await store.board_read("sent", later + 1) == {"fp1": b"put", "fp2": b"put"}


async def test_delete_says_whether_a_live_slot_went(store: Any) -> None:
    await store.board_put("b", "a", b"1", T0 + TTL, T0)
    await store.board_put("b", "z", b"2", T0 + 5, T0)
    assert await store.board_delete("b", "a", T0 + 1)
    assert not await store.board_delete("b", "a", T0 + 1)  # gone already
    assert not await store.board_delete("b", "z", T0 + 5)  # expired
    assert not await store.board_delete("nowhere", "a", T0)
    assert await store.board_read("b", T0 + 1) == {}
    assert await store.board_claim("b", "a", b"again", T0 + TTL, T0 + 2)


async def test_concurrent_claims_in_one_process_set_a_slot_once(store: Any) -> None:
    won = await asyncio.gather(
        *(store.board_claim("sent", "fp", str(n).encode(), T0 + TTL, T0) for n in range(40))
    )
    assert sum(won) == 1
    winner = won.index(True)
    assert await store.board_read("sent", T0) == {"fp": str(winner).encode()}


# -- bounds ---------------------------------------------------------------------------------

BAD_NAMES = ["", "x" * (MAX_NAME + 1), "tab\there", "new\nline", "caf\u00e9", "nul\x00", 7]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("which", ["board", "slot"])
async def test_bad_names_are_refused(store: Any, which: str, name: Any) -> None:
    board, slot = (name, "s") if which == "board" else ("b", name)
    calls = [
        store.board_put(board, slot, b"v", T0 + TTL, T0),
        store.board_claim(board, slot, b"v", T0 + TTL, T0),
        store.board_delete(board, slot, T0),
    ]
    if which == "board":
        calls.append(store.board_read(board, T0))
    for call in calls:
        with pytest.raises(ValueError, match=f"a {which} name must be 1 to {MAX_NAME} printable"):
            await call
    assert await store.board_read("b", T0) == {}


async def test_a_value_holds_at_most_a_mebibyte(store: Any) -> None:
    await store.board_put("b", "full", b"v" * MAX_VALUE, T0 + TTL, T0)
    with pytest.raises(ValueError, match=f"at most {MAX_VALUE} bytes, got {MAX_VALUE + 1}"):
        await store.board_put("b", "over", b"v" * (MAX_VALUE + 1), T0 + TTL, T0)
    with pytest.raises(ValueError, match="at most"):
        await store.board_claim("b", "over", b"v" * (MAX_VALUE + 1), T0 + TTL, T0)
    with pytest.raises(ValueError, match="must be bytes, got str"):
        await store.board_put("b", "text", "v", T0 + TTL, T0)
    got = await store.board_read("b", T0)
    assert list(got) == ["full"]
    assert got["full"] == b"v" * MAX_VALUE


@pytest.mark.parametrize("expires_at", [T0, T0 - 1, math.inf, math.nan])
async def test_expires_at_must_be_a_finite_time_after_now(store: Any, expires_at: float) -> None:
    for call in (store.board_put, store.board_claim):
        with pytest.raises(ValueError, match="expires_at must be a finite time after now"):
            await call("b", "s", b"v", expires_at, T0)
    assert await store.board_read("b", T0) == {}


async def test_a_board_holds_at_most_max_slots_live_ones(store: Any) -> None:
    first = [f"s{n}" for n in range(MAX_SLOTS // 2)]
    second = [f"t{n}" for n in range(MAX_SLOTS - len(first))]
    await _put_all(store, "full", first, T0 + 10, T0)
    await _put_all(store, "full", second, T0 + TTL, T0)
    with pytest.raises(ValueError, match=f"board 'full' is full: it holds {MAX_SLOTS} live"):
        await store.board_put("full", "new", b"v", T0 + TTL, T0 + 1)
    with pytest.raises(ValueError, match="is full"):
        await store.board_claim("full", "new", b"v", T0 + TTL, T0 + 1)
    # A live slot may still be overwritten; claiming it answers False, not an error.
    await store.board_put("full", "s0", b"again", T0 + 10, T0 + 1)
    assert not await store.board_claim("full", "t0", b"v", T0 + TTL, T0 + 1)
    # Another board is not this one's business.
    await store.board_put("other", "new", b"v", T0 + TTL, T0 + 1)
    # Once slots expire (or are deleted), new ones fit again.
    assert await store.board_delete("full", "t1", T0 + 1)
    assert await store.board_claim("full", "new", b"v", T0 + TTL, T0 + 2)
    with pytest.raises(ValueError, match="is full"):
        await store.board_put("full", "newer", b"v", T0 + TTL, T0 + 2)
    await store.board_put("full", "newer", b"v", T0 + TTL, T0 + 10)
    got = await store.board_read("full", T0 + 10)
    assert len(got) == len(second) + 1
    assert got["new"] == got["newer"] == b"v"
    assert "s0" not in got


async def _put_all(store: Any, board: str, slots: list[str], expires_at: float, now: float) -> None:
    if hasattr(store, "schema"):
        # PostgreSQL: one write after another under the board's lock would take some 20 s;
        # the rows the function counts are written in one statement instead.
        query = (
            f'INSERT INTO "{store.schema}".surefoot_board (board, slot, value, expires_at) '
            "SELECT %s, slot, 'v', %s FROM unnest(%s::text[]) AS slot RETURNING 1"
        )
        await store._query(query, (board, expires_at, slots))
        return
    for i in range(0, len(slots), 500):
        await asyncio.gather(
            *(store.board_put(board, slot, b"v", expires_at, now) for slot in slots[i : i + 500])
        )


# -- expired slots do not pile up (a look inside each store) ----------------------------------


async def _stored(store: Any, board: str) -> int:
    """Slots of ``board`` the store still keeps, expired ones included."""
    if isinstance(store, MemoryStore):
        return len(store._boards.get(board, {}))
    if isinstance(store, SqliteStore):
        row = store._db.execute("SELECT count(*) FROM surefoot_board WHERE board = ?", (board,))
        return int(row.fetchone()[0])
    if hasattr(store, "_client"):  # RedisStore
        return int(await store._client.hlen(store.prefix + "board:" + board))
    query = f'SELECT count(*) FROM "{store.schema}".surefoot_board WHERE board = %s'
    [(count,)] = await store._query(query, (board,))
    return int(count)


async def test_expired_slots_are_dropped(store: Any) -> None:
    for n in range(5):
        await store.board_put("old", f"s{n}", b"v", T0 + 10 + n, T0)
    await store.board_put("kept", "s", b"v", T0 + 1000, T0)
    assert await _stored(store, "old") == 5
    await store.board_read("old", T0 + 12)
    await store.purge(T0 + 12)
    # The network stores on their own clock drop them too; here, each store drops them
    # by the read (memory, Redis) or by its purge (SQLite, PostgreSQL).
    assert await _stored(store, "old") == 2
    await store.board_read("old", T0 + 100)
    await store.purge(T0 + 100)
    assert await _stored(store, "old") == 0
    assert await store.board_read("kept", T0 + 100) == {"s": b"v"}


async def test_memory_store_sweeps_boards_nobody_reads_again() -> None:
    store = MemoryStore()
    for minute in range(30):
        now = T0 + 60 * minute
        await store.board_put(f"top:m{minute}", "w1", b"v", now + 120, now)
    # Every board whose slot expired was swept by a later put, unread.
    assert sorted(store._boards) == ["top:m28", "top:m29"]
    assert await store.purge(T0 + 60 * 40) == 2
    assert store._boards == {}


async def test_redis_board_key_expires_with_its_latest_slot(tmp_path: Path) -> None:
    async with store_url("redis", tmp_path, options="timeout=5") as url:
        store: Any = store_from_url(url)
        try:
            key = store.prefix + "board:b"
            await store.board_put("b", "s1", b"v", T0 + 100, T0)
            await store.board_put("b", "s2", b"v", T0 + 30, T0)
            assert 99_000 < await store._client.pttl(key) <= 101_000
            await store.board_put("b", "s3", b"v", T0 + 500, T0)
            assert 499_000 < await store._client.pttl(key) <= 501_000
            # Every slot expired: the read leaves nothing behind.
            assert await store.board_read("b", T0 + 500) == {}
            assert await store._client.exists(key) == 0
        finally:
            await store.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis_cluster", "postgres"])
async def test_network_stores_on_their_own_clock_keep_a_slot_for_its_ttl(
    kind: str, tmp_path: Path
) -> None:
    # The caller's now is T0, long ago: a slot lives expires_at - now on the server's clock.
    async with store_url(kind, tmp_path, clock="server", options="timeout=5") as url:
        store: Any = store_from_url(url)
        try:
            assert await store.board_claim("b", "s", b"one", T0 + TTL, T0)
            assert not await store.board_claim("b", "s", b"two", T0 + TTL, T0)
            await store.board_put("b", "t", b"three", T0 + TTL, T0)
            assert await store.board_read("b", T0) == {"s": b"one", "t": b"three"}
            assert await store.board_delete("b", "s", T0)
            assert await store.board_read("b", T0 + 2 * TTL) == {"t": b"three"}
        finally:
            await store.aclose()


async def test_sqlite_upgrades_a_version_6_file_with_a_board_table(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    store = SqliteStore(path)
    await store.cache_put("k", b"v", T0 + 60, T0)
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE surefoot_board")
        db.execute("PRAGMA user_version = 6")
    upgraded = SqliteStore(path)
    try:
        assert await upgraded.board_claim("b", "s", b"v", T0 + 60, T0)
        assert await upgraded.board_read("b", T0) == {"s": b"v"}
        assert await upgraded.cache_get("k", T0 + 1) == b"v"  # what was there stays
    finally:
        await upgraded.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (7,)


# -- claims from several OS processes -------------------------------------------------------

CTX = multiprocessing.get_context("spawn")
WORKERS = 4
CLAIMS = 8  # per worker and slot, all at once
SLOTS = ("fp-a", "fp-b", "fp-c")
GUARD = 60.0  # seconds a wait may last before the test fails instead of hanging


def claimer(url: str, barrier: Any, worker: int, out: Path) -> None:
    """Claim each of ``SLOTS`` ``CLAIMS`` times at once, together with the other workers;
    write the values this worker set."""

    async def main() -> list[str]:
        store: Any = store_from_url(url)
        try:
            barrier.wait(GUARD)
            values = [f"w{worker}-c{n}-{slot}" for slot in SLOTS for n in range(CLAIMS)]
            won = await asyncio.gather(
                *(
                    store.board_claim("sent", _slot_of(value), value.encode(), T0 + TTL, T0)
                    for value in values
                )
            )
        finally:
            await store.aclose()
        return [value for value, ok in zip(values, won, strict=True) if ok]

    out.write_text(json.dumps(asyncio.run(main())))


def _slot_of(value: str) -> str:
    return value.split("-", 2)[2]


@pytest.fixture(params=["sqlite", "redis", "redis_cluster", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store every process opens by URL, set up before the workers start."""
    kind: str = request.param
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    with store_url_sync(kind, tmp_path, options=options) as url:
        keeper: Any = store_from_url(url)  # creates the SQLite file before the workers
        yield url
        asyncio.run(keeper.aclose())


@pytest.mark.slow
def test_processes_claiming_one_slot_at_once_set_it_once(shared_url: str, tmp_path: Path) -> None:
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=claimer, args=(shared_url, barrier, n, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    won = [value for out in outs for value in json.loads(out.read_text())]
    assert sorted(_slot_of(value) for value in won) == sorted(SLOTS)

    async def read() -> dict[str, bytes]:
        store: Any = store_from_url(shared_url)
        try:
            got: dict[str, bytes] = await store.board_read("sent", T0)
            return got
        finally:
            await store.aclose()

    assert asyncio.run(read()) == {_slot_of(value): value.encode() for value in won}
