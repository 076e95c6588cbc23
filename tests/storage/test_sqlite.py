from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from pathlib import Path

import pytest

import surefoot.storage.sqlite as sqlite_module
from _support import T0
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Outcome,
    OverQuota,
    Replay,
    Reserved,
    Step,
    StoredResponse,
    scoped_key,
)
from surefoot.ratelimit import Item, Limit
from surefoot.storage import MemoryStore, SqliteStore, store_from_url
from surefoot.storage.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

OK = StoredResponse(200, ((b"a", b"b"),), b"ok")


def req(token: str, ttl: float = 600) -> Begin:
    return Begin(fingerprint="fp", token=token, lease=30, ttl=ttl, on_lease_expiry="unknown")


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.begin("k", req("t1"), T0)
    await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0)
    await store.aclose()
    again = SqliteStore(tmp_path / "s.db")
    assert await again.begin("k", req("t2"), T0 + 1) == Replay(OK)
    await again.aclose()


async def test_a_held_write_lock_times_out_as_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.begin("k", req("t1"), T0)
        assert "locked" not in info.value.detail  # the store's text never reaches a client
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert isinstance(await store.begin("k", req("t1"), T0), Reserved)
    await store.aclose()


async def test_purge_under_a_held_write_lock_waits_then_is_store_unavailable(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    await store.begin("k", req("t1", ttl=120), T0)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.purge(T0 + 200)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.purge(T0 + 200) == 1
    await store.aclose()


async def test_a_failing_purge_never_fails_the_step_it_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    # Stands for SQLITE_FULL or SQLITE_IOERR during the purge, after the step committed.
    monkeypatch.setattr(sqlite_module, "_PURGE_BOARD", "DELETE FROM no_such_table WHERE ? AND ?")
    with caplog.at_level(logging.WARNING, logger="surefoot.storage"):
        assert await store.begin("k", req("t1"), T0) == Reserved("t1", 1, False)
        assert await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 1)
    assert await store.begin("k", req("t2"), T0 + 2) == Replay(OK)
    [warning] = caplog.records  # once: the next batch waits its interval
    assert "expired rows" in warning.getMessage()
    await store.aclose()


async def test_the_steps_of_one_loop_turn_share_one_transaction_in_arrival_order(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.begin("done", req("t0"), T0)  # the first write also purges: done before
    await store.finish("done", "t0", Outcome(Step.COMPLETE, OK), T0)
    ran: list[str] = []
    store._db.set_trace_callback(ran.append)
    decisions = await asyncio.gather(
        store.begin("k", req("a"), T0 + 1),  # alone on its turn: a plain read, then queued
        store.begin("k", req("b"), T0 + 1),  # queued behind it: sees its reservation
        store.begin("done", req("c"), T0 + 1),  # a replay, read in the same transaction
        store.finish("done", "t0", Outcome(Step.COMPLETE, OK), T0 + 1),  # settled already
        store.begin("other", req("d"), T0 + 1),
    )
    assert decisions == [
        Reserved("a", 1, False),
        InProgress(T0 + 31),
        Replay(OK),
        False,
        Reserved("d", 1, False),
    ]
    assert (ran.count("BEGIN IMMEDIATE"), ran.count("COMMIT")) == (1, 1)
    # One read per step in the transaction, and the first begin's plain read before it.
    assert sum(sql.startswith("SELECT") for sql in ran) == 1 + 5
    await store.aclose()


async def test_a_begin_alone_on_its_turn_replays_without_the_write_lock(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    await store.begin("k", req("t1"), T0)
    await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert await store.begin("k", req("t2"), T0 + 1) == Replay(OK)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.aclose()


@pytest.mark.parametrize("failure", ["held write lock", "broken database"])
async def test_a_failed_batch_fails_each_of_its_steps_with_an_error_of_its_own(
    tmp_path: Path, failure: str
) -> None:
    store = SqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    await store.begin("k", req("t1"), T0)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    if failure == "held write lock":
        other.execute("BEGIN IMMEDIATE")
    else:
        store._db.execute("DROP TABLE surefoot_ratelimit")
    minute = Item("rl:{alice}", "fixed_window", Limit(5, 60, algorithm="fixed_window"))
    try:
        errors = await asyncio.gather(
            store.acquire([minute], T0),
            store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0),  # fails with its batch
            store.acquire([minute], T0),
            return_exceptions=True,
        )
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(error, StoreUnavailable) for error in errors)
    assert len({id(error) for error in errors}) == 3
    causes = {id(error.__cause__) for error in errors}
    assert len(causes) == 1  # the one SQLite error, kept for logs
    assert isinstance(errors[0].__cause__, sqlite3.OperationalError)
    await store.aclose()


async def test_a_broken_database_is_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store._db.execute("DROP TABLE surefoot_idempotency")
    with pytest.raises(StoreUnavailable):
        await store.begin("k", req("t1"), T0)
    with pytest.raises(StoreUnavailable):
        await store.get("k", T0)
    await store.aclose()


async def test_expired_rows_are_purged_in_batches_on_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", purge_interval=60, purge_batch=3)
    for i in range(7):
        await store.begin(f"k{i}", req(f"t{i}", ttl=120), T0)
    count = "SELECT count(*) FROM surefoot_idempotency"
    # First write after expiry: one batch of 3 (the new row is not expired).
    await store.begin("n1", req("x1"), T0 + 200)
    assert store._db.execute(count).fetchone()[0] == 8 - 3
    # A full batch brings the next one forward by a second only.
    await store.begin("n2", req("x2"), T0 + 200.5)
    assert store._db.execute(count).fetchone()[0] == 6
    await store.begin("n3", req("x3"), T0 + 201)
    assert store._db.execute(count).fetchone()[0] == 7 - 3
    await store.aclose()


async def test_a_version_3_file_gains_record_owners_and_keeps_its_records(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute(
        "CREATE TABLE surefoot_idempotency (key TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "fingerprint TEXT NOT NULL, token TEXT NOT NULL, generation INTEGER NOT NULL, "
        "lease_expires_at REAL NOT NULL, expires_at REAL NOT NULL, ttl REAL NOT NULL, "
        "status INTEGER, headers TEXT, body BLOB)"
    )
    db.execute(
        "INSERT INTO surefoot_idempotency VALUES "
        "('old', 'completed', 'fp', 't0', 1, ?, ?, 600, 200, '[]', x'6f6b')",
        (T0 + 30, T0 + 600),
    )
    db.execute("PRAGMA user_version = 3")
    db.close()
    store = SqliteStore(tmp_path / "s.db")
    assert await store.begin("old", req("t1"), T0 + 1) == Replay(StoredResponse(200, (), b"ok"))
    owned = [scoped_key("cred:a", f"k{i}") for i in range(3)]
    quota = req("t")._replace(max_records=2)
    assert isinstance(await store.begin(owned[0], quota, T0), Reserved)
    assert isinstance(await store.begin(owned[1], quota, T0), Reserved)
    assert isinstance(await store.begin(owned[2], quota, T0), OverQuota)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    await store.aclose()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigurationError, match="newer than this surefoot"):
        SqliteStore(tmp_path / "s.db")


def test_a_refused_file_leaves_no_connection_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording(*args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))  # type: ignore[arg-type]
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording)
    with pytest.raises(ConfigurationError, match="newer than this surefoot"):
        SqliteStore(tmp_path / "s.db")
    [refused] = opened
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        refused.execute("SELECT 1")


def test_unopenable_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot open database"):
        SqliteStore(tmp_path / "missing-dir" / "s.db")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"synchronous": "OFF"}, "synchronous: expected 'NORMAL' or 'FULL'"),
        ({"lock_timeout": 0}, "expected lock_timeout > 0"),
        ({"lock_timeout": math.nan}, r"expected lock_timeout > 0 \(finite\)"),
        ({"lock_timeout": math.inf}, r"expected lock_timeout > 0 \(finite\)"),
        ({"purge_interval": math.nan}, "purge_interval > 0"),
        ({"purge_batch": 0}, "purge_batch >= 1"),
    ],
)
def test_bad_options_are_configuration_errors(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SqliteStore(tmp_path / "s.db", **kwargs)  # type: ignore[arg-type]


def test_store_from_url(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    memory = store_from_url("memory://?max_records=5")
    assert isinstance(memory, MemoryStore)
    assert memory.max_records == 5
    sqlite_store = store_from_url(f"sqlite:///{tmp_path}/u.db?synchronous=full")
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.path == f"{tmp_path}/u.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x", r"expected one of the schemes \['memory', 'postgres', .*\], got 'mysql'"),
        ("mysql://u:hunter2@x", r"'mysql://u:\*\*\*@x'"),
        ("sqlite://", "expected a database file"),
        ("memory://?max_records=lots", "max_records: expected an integer, got 'lots'"),
        ("memory://?colour=blue", r"unknown options \['colour'\]"),
        ("sqlite:///x.db?synchronous=off", "synchronous: expected NORMAL or FULL"),
        ("sqlite:///x.db?lock_timeout=nan", "lock_timeout: expected a finite number of seconds"),
        ("sqlite:///x.db?lock_timeout=inf", "lock_timeout: expected a finite number of seconds"),
    ],
)
def test_bad_store_urls_say_what_is_expected(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        store_from_url(url)
