"""``SqliteStore``'s sliding log: a table of entries, each lookup one index seek (Rule 6).

What the store promises beyond the shared contract: it decides exactly as the pure
algorithm over a ``ListLog`` (Hypothesis), no statement of a decision walks the log
(every query plan is an index seek, and a decision runs as many SQLite VM instructions
at 5,000 live entries as at 500), a key keeps only its live entries, idle keys' entries
go with the purge, and a file of schema version 4 keeps its sliding logs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support import T0
from surefoot.ratelimit import Item, Limit, plan
from surefoot.ratelimit._algorithms import CounterState
from surefoot.storage import SqliteStore

pytestmark = pytest.mark.anyio

KEY = "rl:{alice}:log"
LOG = Limit(5, 60, algorithm="sliding_log")


def hit(limit: Limit = LOG, key: str = KEY, *, cost: int = 1, enforce: bool = True) -> Item:
    return Item(key, "sliding_log", limit, cost=cost, enforce=enforce)


def entries(store: SqliteStore, key: str = KEY) -> list[tuple[float, int, int]]:
    query = "SELECT time, total, cost FROM surefoot_ratelimit_log WHERE key = ? ORDER BY total"
    return store._db.execute(query, (key,)).fetchall()


async def fill(store: SqliteStore, limit: Limit, n: int) -> None:
    """``n`` admissions of cost 1 spread over the first half of the window."""
    step = limit.window / 2 / n
    results = await asyncio.gather(*(store.acquire([hit(limit)], T0 + i * step) for i in range(n)))
    assert all(admitted for admitted, _ in results)


# -- the same decisions as the pure algorithm ----------------------------------------------

STEPS = st.lists(
    st.tuples(
        # Time moves on by nothing, a little, about a window, or steps back.
        st.sampled_from([0.0, 0.25, 1.0, 7.5, 30.0, 59.999, 60.0, 61.0, -2.0]),
        st.integers(1, 4),  # the sliding log's cost
        st.sampled_from(["alone", "shadow", "with a second limit"]),
    ),
    max_size=40,
)


@pytest.mark.parametrize("together", [False, True], ids=["one by one", "in one batch"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
async def test_decides_exactly_as_the_pure_algorithm(
    together: bool, steps: list[tuple[float, int, str]]
) -> None:
    # A second limit (a fixed window of 3 a minute) refuses some requests the log
    # admitted: the log must then keep nothing of them.
    minute = Item("rl:{alice}:minute", "fixed_window", Limit(3, 60, algorithm="fixed_window"))
    requests, expected = [], []
    states: dict[str, CounterState] = {}
    now = T0
    for delta, cost, shape in steps:
        now += delta
        log = hit(cost=cost, enforce=shape != "shadow")
        items = [log, minute] if shape == "with a second limit" else [log]
        admitted, decisions, writes = plan([states.get(i.key) for i in items], items, now)
        states.update((w.key, w.state) for w in writes)
        requests.append((items, now))
        expected.append((admitted, decisions))
    store = SqliteStore(":memory:", purge_interval=1e9)  # a purge would delete dead entries
    try:
        if together:  # one transaction, decided in arrival order
            got = await asyncio.gather(*(store.acquire(items, at) for items, at in requests))
        else:
            got = [await store.acquire(items, at) for items, at in requests]
        assert got == expected
        assert entries(store) == list(states.get(KEY) or ())
    finally:
        await store.aclose()


# -- no decision walks the log -------------------------------------------------------------


@contextmanager
def statements(db: sqlite3.Connection) -> Iterator[list[str]]:
    """The SQL ``db`` runs meanwhile, with its parameters written in."""
    ran: list[str] = []
    db.set_trace_callback(ran.append)
    try:
        yield ran
    finally:
        db.set_trace_callback(None)


@contextmanager
def vm_steps(db: sqlite3.Connection) -> Iterator[list[int]]:
    """How many SQLite VM instructions ``db`` runs meanwhile (a one-item list)."""
    count = [0]

    def step() -> int:
        count[0] += 1
        return 0  # go on

    db.set_progress_handler(step, 1)
    try:
        yield count
    finally:
        db.set_progress_handler(None, 1)


async def test_every_statement_of_a_sliding_log_decision_is_an_index_seek(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db", purge_interval=1e9)  # no purge meanwhile
    limit = Limit(50, 60, algorithm="sliding_log")
    try:
        await fill(store, limit, 50)
        with statements(store._db) as ran:
            refused, _ = await store.acquire([hit(limit)], T0 + 40)
            admitted, _ = await store.acquire([hit(limit)], T0 + 60.1)  # the first has left
        assert (refused, admitted) == (False, True)
        queries = [sql for sql in ran if sql.startswith(("SELECT", "DELETE"))]
        assert len(queries) == 6  # refused: oldest, newest, reaching; admitted: two and a delete
        for sql in queries:
            plan = [row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert plan, sql
            assert all(step.startswith("SEARCH") for step in plan), (sql, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)
    finally:
        await store.aclose()


async def vm_steps_per_decision(path: Path, n: int) -> tuple[int, int]:
    """VM instructions of a refused decision on a full log of ``n`` entries, and of an
    admitted one that replaces the entry that just left."""
    store = SqliteStore(path, purge_interval=1e9)  # no purge meanwhile
    limit = Limit(n, 60, algorithm="sliding_log")
    try:
        await fill(store, limit, n)
        with vm_steps(store._db) as refused:
            assert not (await store.acquire([hit(limit)], T0 + 40))[0]
        with vm_steps(store._db) as admitted:
            assert (await store.acquire([hit(limit)], T0 + 60 + 15 / n))[0]
        assert len(entries(store)) == n
        return refused[0], admitted[0]
    finally:
        await store.aclose()


async def test_a_decision_costs_as_many_vm_instructions_at_5000_entries_as_at_500(
    tmp_path: Path,
) -> None:
    # A statement that walked the log would run an instruction or more per entry.
    small = await vm_steps_per_decision(tmp_path / "small.db", 500)
    large = await vm_steps_per_decision(tmp_path / "large.db", 5000)
    assert small == large
    assert min(small) > 0


# -- what a key keeps ----------------------------------------------------------------------


async def test_a_key_keeps_only_its_live_entries(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    limit = Limit(3, 10, algorithm="sliding_log")
    try:
        for t in (0, 1, 2):
            assert (await store.acquire([hit(limit)], T0 + t))[0]
        assert entries(store) == [(T0, 1, 1), (T0 + 1, 2, 1), (T0 + 2, 3, 1)]
        # At T0 + 11 the entries of T0 and T0 + 1 have left the window: an admission
        # forgets them.
        assert (await store.acquire([hit(limit, cost=2)], T0 + 11))[0]
        assert entries(store) == [(T0 + 2, 3, 1), (T0 + 11, 5, 2)]
        # A refused request writes nothing, even when entries have left meanwhile.
        assert not (await store.acquire([hit(limit, cost=3)], T0 + 12.5))[0]
        assert entries(store) == [(T0 + 2, 3, 1), (T0 + 11, 5, 2)]
        # Once every entry has left, an admission leaves its own alone.
        assert (await store.acquire([hit(limit)], T0 + 30))[0]
        assert entries(store) == [(T0 + 30, 6, 1)]
    finally:
        await store.aclose()


async def test_a_look_at_the_limits_and_two_limits_of_one_key_log_one_entry(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        # Cost 0 (what the admin API's look at a principal's limits sends) logs nothing.
        assert (await store.acquire([hit(cost=0)], T0 - 1))[0]
        assert entries(store) == []
        await store.acquire([hit()], T0)
        admitted, [look] = await store.acquire([hit(cost=0)], T0 + 1)
        assert (admitted, look.remaining) == (True, 4)
        # Two limits under one key are decided from one state: one entry, counted by both.
        both = [hit(), hit(Limit(3, 60, algorithm="sliding_log"))]
        admitted, decisions = await store.acquire(both, T0 + 2)
        assert (admitted, [d.remaining for d in decisions]) == (True, [3, 1])
        assert entries(store) == [(T0, 1, 1), (T0 + 2, 2, 1)]
        assert (await store.acquire([hit()], T0 + 3))[1][0].remaining == 2
    finally:
        await store.aclose()


async def test_the_entries_of_idle_keys_go_with_the_purge_batches(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", purge_interval=60, purge_batch=2)
    limit = Limit(5, 10, algorithm="sliding_log")
    try:
        for t in (0, 1, 2):  # the first write purges (nothing yet) and sets the next purge
            await store.acquire([hit(limit)], T0 + t)
        await store.acquire([hit(limit, "rl:{bob}:log")], T0 + 100)
        assert len(entries(store)) == 1  # a full batch of two: the next purge a second later
        await store.acquire([hit(limit, "rl:{bob}:log")], T0 + 101)
        assert entries(store) == []
        assert len(entries(store, "rl:{bob}:log")) == 2
    finally:
        await store.aclose()


# -- upgrading from schema version 4 -------------------------------------------------------


async def test_a_version_4_file_keeps_its_sliding_logs(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    # A version 4 file: what this version writes, without the log table, its counters as
    # JSON. The log's third entry stepped back in time; its second is an admin's look.
    await SqliteStore(path).aclose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TABLE surefoot_ratelimit_log")
    db.execute("PRAGMA user_version = 4")
    rows = [
        (KEY, [T0, 1, T0 + 1, 0, T0 + 2, 2, T0 + 1.5, 1], T0 + 61.5),
        ("rl:{alice}:minute", [T0 - 20, 2], T0 + 40),  # a fixed window, as one-entry log reads
        ("rl:{alice}:bucket", [2.5, T0 + 1], T0 + 2),  # a token bucket: no log
    ]
    for key, state, expires_at in rows:
        db.execute(
            "INSERT INTO surefoot_ratelimit VALUES (?, ?, ?)", (key, json.dumps(state), expires_at)
        )
    db.close()

    store = SqliteStore(path)
    try:
        assert entries(store) == [(T0, 1, 1), (T0 + 2, 3, 2), (T0 + 2, 4, 1)]
        assert entries(store, "rl:{alice}:bucket") == []
        last = await store.acquire([hit()], T0 + 3)
        assert (last[0], last[1][0].remaining) == (True, 0)
        refused = (await store.acquire([hit(cost=2)], T0 + 4))[1][0]
        assert (refused.allowed, refused.retry_after) == (False, 58.0)  # once T0 + 2 has left
        minute = Item("rl:{alice}:minute", "fixed_window", Limit(3, 60, algorithm="fixed_window"))
        assert [(await store.acquire([minute], T0 + 5))[0] for _ in range(2)] == [True, False]
    finally:
        await store.aclose()
