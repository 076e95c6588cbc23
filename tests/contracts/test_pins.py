"""``VersionPins`` over every store: the first pin is recorded once, every worker reads it.

Each store kind of ``_services.STORE_KINDS`` (Redis and PostgreSQL skipped when absent,
failed under ``SUREFOOT_REQUIRE_SERVICES=1``); a store that fails and a full board record
nothing and cache nothing; the cache's bound; and 4 OS processes pinning the same new
clients at once, of which exactly one records each pin (worker: ``_pin_workers.pinner``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pin_workers import CLIENTS, GUARD, candidate, pinner

from _services import STORE_KINDS, store_url, store_url_sync
from _support import T0
from surefoot._board import MAX_SLOTS, board_full
from surefoot.contracts import VersionPins
from surefoot.contracts import _pins as pins_module
from surefoot.contracts._pins import KEEP, SHARDS
from surefoot.storage import MemoryStore, store_from_url

pytestmark = pytest.mark.anyio

V1, V2 = "2024-01-15", "2024-06-01"


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


def board_of(client: str) -> str:
    """The board a client's pin lives on, computed here from Rule 1's description."""
    return f"versions:pins:{zlib.crc32(client.encode()) % SHARDS:02d}"


async def test_the_first_pin_is_recorded_and_every_worker_reads_it(store: Any) -> None:
    one, two = VersionPins(store), VersionPins(store)
    assert await one.read(T0) == {}
    assert await one.pin("client:acme", V1, T0) == (V1, True)
    # Another worker, with another version in mind, is served the recorded one.
    assert await two.pin("client:acme", V2, T0 + 1) == (V1, False)
    assert await one.pin("client:acme", V2, T0 + 2) == (V1, False)
    assert await VersionPins(store).pin("cred:zz", V2, T0 + 3) == (V2, True)
    assert await two.read(T0 + 4) == {"client:acme": V1, "cred:zz": V2}
    assert await store.board_read(board_of("client:acme"), T0 + 4) == {"client:acme": V1.encode()}


async def test_a_pin_is_kept_ten_years(store: Any) -> None:
    pins = VersionPins(store)
    assert await pins.pin("client:acme", V1, T0) == (V1, True)
    assert KEEP == 10 * 365 * 86400
    assert await VersionPins(store).read(T0 + KEEP - 1) == {"client:acme": V1}
    assert await VersionPins(store).read(T0 + KEEP) == {}


async def test_odd_client_names_are_stored_under_a_hash(store: Any) -> None:
    names = ["cred:" + "a" * 300, "user:\u00e9", "tab\there", "bell\x07"]
    pins = VersionPins(store)
    for n, name in enumerate(names):
        version = f"2024-01-{n + 10}"
        assert await pins.pin(name, version, T0) == (version, True)
        assert await VersionPins(store).pin(name, V2, T0) == (version, False)
    recorded = await pins.read(T0)
    assert sorted(recorded.values()) == ["2024-01-10", "2024-01-11", "2024-01-12", "2024-01-13"]
    assert all(slot.startswith("h:") and len(slot) == 42 for slot in recorded)


async def test_an_empty_client_name_is_pinned_too() -> None:
    assert await VersionPins(MemoryStore()).pin("", V1, T0) == (V1, True)


class Board:
    """A ``BoardStore`` over a ``MemoryStore`` that fails while told to, counting calls."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.error: Exception | None = None
        self.lose_reads = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        self._check()
        await self.inner.board_put(board, slot, value, expires_at, now)

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        self._check()
        return await self.inner.board_claim(board, slot, value, expires_at, now)

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        self._check()
        return {} if self.lose_reads else await self.inner.board_read(board, now)

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        self._check()
        return await self.inner.board_delete(board, slot, now)


@pytest.mark.parametrize(
    "error",
    [ConnectionError("redis went away"), OSError("disk full"), board_full("versions:pins:07")],
    ids=["connection", "disk", "full"],
)
async def test_a_failing_store_pins_nothing_and_caches_nothing(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    board = Board()
    pins = VersionPins(board)
    board.error = error
    with caplog.at_level(logging.WARNING, logger="surefoot.contracts"):
        assert await pins.pin("client:acme", V1, T0) == (None, False)
    assert "could not record the version pin of client:acme" in caplog.text
    assert str(error) in caplog.text
    # Nothing was cached: once the store is back, the pin is recorded then.
    board.error = None
    assert await pins.pin("client:acme", V2, T0 + 1) == (V2, True)
    assert await pins.read(T0 + 1) == {"client:acme": V2}


async def test_a_full_board_records_nothing() -> None:
    store = MemoryStore()
    board = board_of("client:late")
    for n in range(MAX_SLOTS):
        await store.board_put(board, f"s{n}", b"x", T0 + 60, T0)
    pins = VersionPins(store)
    assert await pins.pin("client:late", V1, T0) == (None, False)
    assert "client:late" not in await pins.read(T0)
    # A slot frees up (they expire): the next request records the pin.
    assert await pins.pin("client:late", V2, T0 + 60) == (V2, True)


async def test_a_pin_gone_between_the_claim_and_the_read_is_not_guessed() -> None:
    board = Board()
    await VersionPins(board).pin("client:acme", V1, T0)
    board.lose_reads = True
    pins = VersionPins(board)
    assert await pins.pin("client:acme", V2, T0) == (None, False)
    board.lose_reads = False
    assert await pins.pin("client:acme", V2, T0) == (V1, False)


async def test_read_pins_are_cached() -> None:
    board = Board()
    pins = VersionPins(board)
    assert await pins.pin("client:acme", V1, T0) == (V1, True)
    calls = board.calls
    for _ in range(5):
        assert await pins.pin("client:acme", V2, T0) == (V1, False)
    assert board.calls == calls
    other = VersionPins(board)
    assert await other.pin("client:acme", V2, T0) == (V1, False)
    calls = board.calls
    assert await other.pin("client:acme", V2, T0) == (V1, False)
    assert board.calls == calls


async def test_the_cache_forgets_everything_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pins_module, "CACHE", 2)
    board = Board()
    pins = VersionPins(board)
    await pins.pin("a", V1, T0)
    await pins.pin("b", V1, T0)
    calls = board.calls
    await pins.pin("a", V2, T0)
    await pins.pin("b", V2, T0)
    assert board.calls == calls  # both cached
    assert await pins.pin("c", V2, T0) == (V2, True)  # a third: the cache starts again
    assert len(pins._cache) == 1
    calls = board.calls
    assert await pins.pin("a", V2, T0) == (V1, False)  # read from the store again
    assert board.calls > calls
    assert len(pins._cache) <= 2


# -- several OS processes pinning the same new clients at once ------------------------------

CTX = multiprocessing.get_context("spawn")
WORKERS = 4


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store every process opens by URL, set up before the workers start."""
    kind: str = request.param
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    with store_url_sync(kind, tmp_path, options=options) as url:
        keeper: Any = store_from_url(url)  # creates the SQLite file before the workers
        yield url
        asyncio.run(keeper.aclose())


@pytest.mark.slow
def test_processes_pinning_new_clients_at_once_agree(shared_url: str, tmp_path: Path) -> None:
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=pinner, args=(shared_url, barrier, n, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    results = [json.loads(out.read_text()) for out in outs]
    recorded: dict[str, str] = {}
    for n, client in enumerate(CLIENTS):
        answers = [result[n] for result in results]
        pins = {pin for pin, _ in answers}
        assert len(pins) == 1, (client, answers)
        (pin,) = pins
        assert pin is not None
        makers = [w for w, (_, made) in enumerate(answers) if made]
        assert len(makers) == 1, (client, answers)
        assert pin == candidate(makers[0])
        recorded[client] = pin

    async def read() -> dict[str, str]:
        store: Any = store_from_url(shared_url)
        try:
            return await VersionPins(store).read(T0)
        finally:
            await store.aclose()

    assert asyncio.run(read()) == recorded
