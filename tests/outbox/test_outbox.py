"""``Outbox``: messages recorded in the application's transaction, and the claims and
records a worker makes from them.

Every test runs on SQLite (a file of the test's own) and on PostgreSQL (tables of a
prefix of the test's own in the shared database, dropped afterwards). Time is a
``ManualClock``; workers' claims and records are driven directly, with ``Outcome``s
built by hand, so each rule of ``_core`` and ``outbox`` is checked on its own.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from _support import GUARD, T0
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.outbox import DeliveryState, Endpoint, Outbox, RetrySchedule
from surefoot.outbox.outbox import Claimed, Outcome
from surefoot.testing import ManualClock

PENDING, SENDING = DeliveryState.PENDING, DeliveryState.SENDING
DELIVERED, FAILED = DeliveryState.DELIVERED, DeliveryState.FAILED
TABLES = ("endpoints", "messages", "deliveries", "attempts")
URL = "https://hooks.example/in"


def secret(seed: str, size: int = 32, prefix: str = "whsec_") -> str:
    """A well-formed secret of ``size`` bytes, recognisable by ``seed``."""
    raw = (seed.encode() * size)[:size]
    return prefix + base64.b64encode(raw).decode()


S1, S2, S3 = secret("one"), secret("two"), secret("three")

AppConn = sqlite3.Connection | psycopg.Connection[Any]


class Boom(Exception):
    """The application's own failure, after it recorded its webhooks."""


class Db:
    """One backend for one test: its URL, table prefix, and the connections it opened
    (all closed, and on PostgreSQL the tables dropped, at the end)."""

    def __init__(self, kind: str, url: str, clock: ManualClock) -> None:
        self.kind = kind
        self.url = url
        self.clock = clock
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self._closers: list[Callable[[], object]] = []

    def outbox(self, **kwargs: Any) -> Outbox:
        kwargs.setdefault("clock", self.clock)
        outbox = Outbox(self.url, prefix=self.prefix, **kwargs)
        self._closers.append(outbox.close)
        outbox.create_tables()
        return outbox

    def app(self, **kwargs: Any) -> Any:
        """A connection of the application's own, not in a transaction."""
        conn: Any
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None, **kwargs)
        else:
            conn = psycopg.connect(self.url, autocommit=True, **kwargs)
        self._closers.append(conn.close)
        return conn

    def worker(self, outbox: Outbox) -> Any:
        conn = outbox.connect()
        self._closers.append(conn.close)
        return conn

    @property
    def path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                rows = conn.execute(sql).fetchall()
            conn.close()
            return rows
        with psycopg.connect(self.url, autocommit=True) as pg:
            return pg.execute(sql).fetchall()

    def counts(self) -> dict[str, int]:
        return {t: self.query(f"SELECT count(*) FROM {self.prefix}_{t}")[0][0] for t in TABLES}

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Db]:
    if request.param == "sqlite":
        backend = Db("sqlite", "sqlite:///" + str(tmp_path / "app.db"), clock)
    else:
        backend = Db("postgres", request.getfixturevalue("postgres_dsn"), clock)
    try:
        yield backend
    finally:
        backend.close()
        if backend.kind == "postgres":
            with psycopg.connect(backend.url, autocommit=True) as pg:
                pg.execute(
                    "DROP TABLE IF EXISTS " + ", ".join(f"{backend.prefix}_{t}" for t in TABLES)
                )


@pytest.fixture
def outbox(db: Db) -> Outbox:
    return db.outbox()


@contextmanager
def transaction(conn: AppConn) -> Iterator[None]:
    """The application's transaction: committed at the end, rolled back on an exception."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    else:
        with conn.transaction():
            yield


def enqueue(db: Db, outbox: Outbox, event_type: str = "invoice.paid", **kwargs: Any) -> str:
    """One message, committed on a fresh application connection."""
    conn = db.app()
    with transaction(conn):
        message_id = outbox.enqueue(conn, event_type, kwargs.pop("payload", {"n": 1}), **kwargs)
    conn.close()
    return message_id


def add(outbox: Outbox, name: str, **kwargs: Any) -> Endpoint:
    kwargs.setdefault("url", f"{URL}/{name}")
    kwargs.setdefault("secrets", [S1])
    return outbox.add_endpoint(name, **kwargs)


def delivered(c: Claimed, at: float) -> Outcome:
    return Outcome(c, DELIVERED, None, True, at, status=200, latency=0.1)


def failed(
    c: Claimed,
    at: float,
    *,
    state: DeliveryState = PENDING,
    next_at: float | None = None,
    **kw: Any,
) -> Outcome:
    kw.setdefault("status", 500)
    return Outcome(c, state, next_at, True, at, **kw)


def state_of(outbox: Outbox, message_id: str, endpoint: str) -> DeliveryState:
    (d,) = outbox.deliveries(message_id=message_id, endpoint=endpoint)
    return d.state


def take(outbox: Outbox, worker: Any, limit: int = 100, lease: float = 60) -> list[Claimed]:
    """A claim, in the order the deliveries were recorded."""
    claimed = outbox.claim(worker, limit=limit, lease=lease)
    return sorted(claimed, key=lambda c: (c.seq, c.endpoint))


def ids(claimed: list[Claimed]) -> set[str]:
    return {c.message_id for c in claimed}


# -- enqueue, in the application's transaction ---------------------------------------------


def test_a_committed_message_reaches_each_matching_enabled_endpoint_of_its_tenant(
    db: Db,
) -> None:
    outbox = db.outbox(event_types=["invoice.*", "customer.created"])
    add(outbox, "all")
    add(outbox, "paid", event_types=["invoice.paid"])
    add(outbox, "invoices", event_types=["invoice.*"])
    add(outbox, "customers", event_types="customer.created")
    add(outbox, "off", enabled=False)
    add(outbox, "globex", tenant="globex")

    paid = enqueue(db, outbox, "invoice.paid", payload={"invoice": 42})
    voided = enqueue(db, outbox, "invoice.voided")
    created = enqueue(db, outbox, "customer.created")
    theirs = enqueue(db, outbox, "invoice.paid", tenant="globex")

    def targets(message_id: str) -> set[str]:
        return {d.endpoint for d in outbox.deliveries(message_id=message_id)}

    assert targets(paid) == {"all", "paid", "invoices"}
    assert targets(voided) == {"all", "invoices"}
    assert targets(created) == {"all", "customers"}
    assert targets(theirs) == {"globex"}
    assert db.counts() == {"endpoints": 6, "messages": 4, "deliveries": 8, "attempts": 0}
    for d in outbox.deliveries(message_id=paid):
        assert (d.state, d.attempts, d.next_at, d.created_at) == (PENDING, 0, T0, T0)
        assert d.event_type == "invoice.paid"
    assert paid.startswith("msg_")
    assert len(paid) == 4 + 26
    assert len({paid, voided, created, theirs}) == 4

    worker = db.worker(outbox)
    claimed = [c for c in outbox.claim(worker, limit=100, lease=60) if c.message_id == paid]
    assert {c.endpoint for c in claimed} == {"all", "paid", "invoices"}
    assert json.loads(claimed[0].body) == {
        "type": "invoice.paid",
        "timestamp": "2023-11-14T22:13:20.000Z",
        "data": {"invoice": 42},
    }


def test_a_rolled_back_transaction_leaves_nothing(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    before = db.counts()
    conn = db.app()

    def fail_after_enqueueing() -> None:
        with transaction(conn):
            outbox.enqueue(conn, "invoice.paid", {"n": 1})
            outbox.enqueue(conn, "invoice.paid", {"n": 2}, event_id="evt_rolled_back")
            raise Boom

    with pytest.raises(Boom):
        fail_after_enqueueing()
    assert db.counts() == before
    assert outbox.deliveries() == []
    # The id of a rolled-back message was never recorded: it can be used again.
    assert enqueue(db, outbox, event_id="evt_rolled_back") == "evt_rolled_back"
    assert len(outbox.deliveries()) == 1


def test_an_event_id_recorded_twice_is_one_message(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    first = enqueue(db, outbox, event_id="evt_1")
    add(outbox, "later")  # would receive the message if it were recorded again
    again = enqueue(db, outbox, event_id="evt_1", payload={"other": True})
    conn = db.app()
    with transaction(conn):
        assert outbox.enqueue(conn, "invoice.paid", {}, event_id="evt_2") == "evt_2"
        assert outbox.enqueue(conn, "invoice.paid", {}, event_id="evt_2") == "evt_2"
    assert first == again == "evt_1"
    assert db.counts()["messages"] == 2
    assert {(d.message_id, d.endpoint) for d in outbox.deliveries()} == {
        ("evt_1", "acme"),
        ("evt_2", "acme"),
        ("evt_2", "later"),
    }
    worker = db.worker(outbox)
    (c,) = [c for c in outbox.claim(worker, limit=10, lease=60) if c.message_id == "evt_1"]
    assert json.loads(c.body)["data"] == {"n": 1}


def test_enqueue_without_an_open_transaction_is_refused(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    conn = db.app()
    with pytest.raises(RuntimeError, match="has none open"):
        outbox.enqueue(conn, "invoice.paid", {"n": 1})
    assert db.counts()["messages"] == 0


def test_enqueue_on_a_connection_that_opens_its_transactions_itself(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    conn: Any
    if db.kind == "sqlite":
        conn = sqlite3.connect(db.path)  # Python's default: BEGIN before the first write
        conn.execute("CREATE TABLE IF NOT EXISTS invoices (id INTEGER)")
        conn.execute("INSERT INTO invoices VALUES (42)")
    else:
        conn = psycopg.connect(db.url)  # not autocommit: BEGIN with the first statement
    try:
        message_id = outbox.enqueue(conn, "invoice.paid", {"n": 1})
        conn.rollback()
        assert db.counts()["messages"] == 0
        if db.kind == "sqlite":
            conn.execute("INSERT INTO invoices VALUES (42)")
        message_id = outbox.enqueue(conn, "invoice.paid", {"n": 1})
        conn.commit()
    finally:
        conn.close()
    assert [d.message_id for d in outbox.deliveries()] == [message_id]


def test_enqueue_ignores_the_applications_row_factory(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    add(outbox, "paid", event_types=["invoice.paid"])
    factories: list[Any]
    if db.kind == "sqlite":
        factories = [
            sqlite3.Row,
            lambda cursor, row: dict(zip([c[0] for c in cursor.description], row, strict=True)),
        ]
    else:
        factories = [dict_row]
    for factory in factories:
        conn = db.app()
        conn.row_factory = factory
        with transaction(conn):
            message_id = outbox.enqueue(conn, "invoice.paid", {"n": 1})
        assert {d.endpoint for d in outbox.deliveries(message_id=message_id)} == {"acme", "paid"}


def test_enqueue_refuses_a_connection_it_cannot_use(db: Db, outbox: Outbox) -> None:
    for wrong in (object(), db.worker(outbox), db.url):
        with pytest.raises(TypeError, match=r"sqlite3\.Connection or a psycopg\.Connection"):
            outbox.enqueue(wrong, "invoice.paid", {})  # type: ignore[arg-type]
    assert db.counts()["messages"] == 0


@pytest.mark.anyio
async def test_aenqueue_records_in_an_async_transaction(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    add(outbox, "other", event_types=["other.thing"])
    if db.kind == "sqlite":
        with pytest.raises(TypeError, match=r"expected a psycopg\.AsyncConnection"):
            await outbox.aenqueue(db.app(), "invoice.paid", {})
        assert db.counts()["messages"] == 0
        return

    async def afail_after_enqueueing(conn: psycopg.AsyncConnection[Any], event_id: str) -> None:
        async with conn.transaction():
            await outbox.aenqueue(conn, "invoice.paid", {}, event_id=event_id)
            raise Boom

    for round, row_factory in enumerate((None, dict_row)):
        conn = await psycopg.AsyncConnection.connect(db.url, autocommit=True)
        if row_factory is not None:
            conn.row_factory = row_factory
        try:
            with pytest.raises(TypeError, match="use aenqueue"):
                outbox.enqueue(conn, "invoice.paid", {})  # type: ignore[arg-type]
            with pytest.raises(RuntimeError, match="has none open"):
                await outbox.aenqueue(conn, "invoice.paid", {})
            with pytest.raises(Boom):
                await afail_after_enqueueing(conn, f"evt_{round}")
            assert db.counts()["messages"] == round
            with pytest.raises(ConfigurationError, match=r"^event_type:"):
                async with conn.transaction():
                    await outbox.aenqueue(conn, "bad type", {})
            async with conn.transaction():
                first = await outbox.aenqueue(conn, "invoice.paid", {}, event_id=f"evt_{round}")
                again = await outbox.aenqueue(conn, "invoice.paid", {}, event_id=f"evt_{round}")
        finally:
            await conn.close()
        assert first == again == f"evt_{round}"
        assert [d.endpoint for d in outbox.deliveries(message_id=first)] == ["acme"]
    assert db.counts() == {"endpoints": 2, "messages": 2, "deliveries": 2, "attempts": 0}


# -- bad input: a ConfigurationError naming the field, and nothing half-created --------------


def _json_overhead(event_type: str) -> int:
    document = {"type": event_type, "timestamp": "2023-11-14T22:13:20.000Z", "data": ""}
    return len(json.dumps(document, separators=(",", ":")))


def _circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"event_type": "refund.created"}, "event_type"),
        ({"event_type": "invoices"}, "event_type"),
        ({"event_type": "bad type"}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": ".paid"}, "event_type"),
        ({"event_type": "x" * 129}, "event_type"),
        ({"event_type": 5}, "event_type"),
        ({"payload": "x" * (256 * 1024)}, "payload"),
        ({"payload": {"when": object()}}, "payload"),
        ({"payload": {"amount": float("nan")}}, "payload"),
        ({"payload": b"bytes"}, "payload"),
        ({"payload": _circular()}, "payload"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "x" * 65}, "tenant"),
        ({"tenant": None}, "tenant"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "evt 1"}, "event_id"),
        ({"event_id": "é"}, "event_id"),
        ({"event_id": "x" * 256}, "event_id"),
        ({"event_id": 5}, "event_id"),
        ({"ordering_key": ""}, "ordering_key"),
        ({"ordering_key": "a b"}, "ordering_key"),
        ({"ordering_key": "x" * 201}, "ordering_key"),
        ({"ordering_key": 7}, "ordering_key"),
    ],
)
def test_enqueue_refuses_bad_input(db: Db, args: dict[str, Any], field: str) -> None:
    outbox = db.outbox(event_types=["invoice.*"])
    add(outbox, "acme")
    enqueue(db, outbox)
    before = db.counts()
    call = {"event_type": "invoice.paid", "payload": {"n": 1}, **args}
    conn = db.app()
    with (
        transaction(conn),
        pytest.raises(  # the application goes on and commits
            ConfigurationError, match=f"^{re.escape(field)}: expected"
        ) as raised,
    ):
        outbox.enqueue(conn, call.pop("event_type"), call.pop("payload"), **call)
    assert db.counts() == before
    assert len(str(raised.value)) < 1000  # the message never quotes a whole payload


def test_the_payload_bound_counts_the_json_body(db: Db) -> None:
    outbox = db.outbox(max_payload=1024)
    add(outbox, "acme")
    fits = "x" * (1024 - _json_overhead("invoice.paid"))
    enqueue(db, outbox, payload=fits)
    with pytest.raises(ConfigurationError, match=r"^payload: .*1024 bytes.*1025 bytes"):
        enqueue(db, outbox, payload=fits + "x")
    assert db.counts()["messages"] == 1
    default = db.outbox()
    assert default.max_payload == 256 * 1024
    enqueue(db, default, payload="x" * (256 * 1024 - _json_overhead("invoice.paid")))
    with pytest.raises(ConfigurationError, match=r"^payload:"):
        enqueue(db, default, payload="x" * (256 * 1024 + 1 - _json_overhead("invoice.paid")))
    assert db.counts()["messages"] == 2


@pytest.mark.parametrize(
    ("args", "field", "hidden"),
    [
        ({"url": "ftp://hooks.example/in"}, "url", None),
        ({"url": "https:///in"}, "url", None),
        ({"url": "hooks.example/in"}, "url", None),
        ({"url": "https://hooks.example:port/in"}, "url", None),
        ({"url": "https://hooks.example/in#top"}, "url", None),
        ({"url": "https://hooks.example/a b"}, "url", None),
        ({"url": "https://" + "x" * 2048}, "url", None),
        ({"url": 5}, "url", None),
        ({"url": "https://user:hunter2pass@hooks.example/in"}, "url", "hunter2pass"),
        ({"url": "https://hunter2token@hooks.example/in"}, "url", "hunter2token"),
        ({"url": "ftp://u:hunter2ftp@hooks.example/in"}, "url", "hunter2ftp"),
        ({"url": "https://u:hunter2nohost@/in"}, "url", "hunter2nohost"),
        ({"secrets": [secret("ed", 24, "whsk_")]}, "secrets[0]", secret("ed", 24, "whsk_")),
        ({"secrets": [secret("ed", 48, "whsk_")]}, "secrets[0]", secret("ed", 48, "whsk_")),
        ({"secrets": [secret("short", 23)]}, "secrets[0]", secret("short", 23)),
        ({"secrets": [S1, secret("short", 16)]}, "secrets[1]", secret("short", 16)),
        ({"secrets": [secret("pfx", prefix="sk_")]}, "secrets[0]", secret("pfx", prefix="sk_")),
        ({"secrets": ["whsec_not!base64!at!all!padding!!"]}, "secrets[0]", "not!base64"),
        ({"secrets": [5]}, "secrets[0]", None),
        ({"secrets": [secret(str(i)) for i in range(6)]}, "secrets", secret("0")),
        ({"secrets": []}, "secrets", None),
        ({"secrets": S1}, "secrets", S1),
        ({"event_types": []}, "event_types", None),
        ({"event_types": ["bad type"]}, "event_types[0]", None),
        ({"event_types": ["invoice.paid", "refund.created"]}, "event_types[1]", None),
        ({"event_types": ["*"]}, "event_types[0]", None),
        ({"event_types": 5}, "event_types", None),
        ({"rate_limit": "lots"}, "rate_limit", None),
        ({"rate_limit": "0/second"}, "rate_limit", None),
        ({"rate_limit": 10}, "rate_limit", None),
        ({"concurrency": 0}, "concurrency", None),
        ({"concurrency": 1001}, "concurrency", None),
        ({"concurrency": True}, "concurrency", None),
        ({"concurrency": "3"}, "concurrency", None),
        ({"tenant": "a b"}, "tenant", None),
        ({"name": ""}, "name", None),
        ({"name": "a/b"}, "name", None),
        ({"name": "acme"}, "name", None),  # taken
    ],
)
def test_add_endpoint_refuses_bad_input(
    db: Db, args: dict[str, Any], field: str, hidden: str | None
) -> None:
    outbox = db.outbox(event_types=["invoice.*"])
    acme = add(outbox, "acme", url="https://acme.example/in", secrets=[S2])
    before = db.counts()
    call = {"name": "new", "url": URL, "secrets": [S1], **args}
    with pytest.raises(ConfigurationError, match=f"^{re.escape(field)}: ") as raised:
        outbox.add_endpoint(call.pop("name"), **call)
    if hidden is not None:
        assert hidden not in str(raised.value)
        assert hidden not in repr(raised.value)
    assert S1 not in str(raised.value)
    assert db.counts() == before
    assert outbox.endpoints() == [acme]


@pytest.mark.parametrize(
    ("args", "field", "hidden"),
    [
        ({"database": "mysql://app:hunter2pw@db.example/app"}, "database", "hunter2pw"),
        ({"database": "/var/app.db"}, "database", None),
        ({"database": "sqlite:///app.db?mode=ro"}, "database", None),
        ({"database": 5}, "database", None),
        ({"prefix": "Outbox"}, "prefix", None),
        ({"prefix": "1outbox"}, "prefix", None),
        ({"prefix": "out-box"}, "prefix", None),
        ({"prefix": "x" * 41}, "prefix", None),
        ({"prefix": ""}, "prefix", None),
        ({"max_payload": 1023}, "max_payload", None),
        ({"max_payload": 16 * 1024 * 1024 + 1}, "max_payload", None),
        ({"max_payload": "1024"}, "max_payload", None),
        ({"schedule": [0, 60, 30]}, "schedule[2]", None),
        ({"schedule": [-1]}, "schedule[0]", None),
        ({"schedule": []}, "schedule", None),
        ({"schedule": 5}, "schedule", None),
        ({"disable_after": 59}, "disable_after", None),
        ({"disable_after": 90 * 86400 + 1}, "disable_after", None),
        ({"disable_after": float("nan")}, "disable_after", None),
        ({"disable_after": "1 day"}, "disable_after", None),
        ({"event_types": ["bad type"]}, "event_types[0]", None),
        ({"event_types": 5}, "event_types", None),
    ],
)
def test_outbox_refuses_bad_configuration(
    db: Db, args: dict[str, Any], field: str, hidden: str | None
) -> None:
    call = {"database": db.url, **args}
    with pytest.raises(ConfigurationError, match=f"^{re.escape(field)}: ") as raised:
        Outbox(call.pop("database"), clock=db.clock, **call)
    if hidden is not None:
        assert hidden not in str(raised.value)


def test_outbox_configuration_that_is_accepted(db: Db) -> None:
    outbox = db.outbox(
        event_types="invoice.paid",
        schedule=[0, 10, 10, 60],
        max_payload=1024,
        disable_after=60,
    )
    assert outbox.event_types == ("invoice.paid",)
    assert outbox.schedule == RetrySchedule((0.0, 10.0, 10.0, 60.0))
    assert outbox.disable_after == 60.0
    pg = Outbox("postgresql://app:hunter2pw@db.example/app")
    assert "hunter2pw" not in repr(pg)


def test_an_endpoint_may_take_a_family_of_the_declared_types(db: Db) -> None:
    outbox = db.outbox(event_types=["invoice.paid", "invoice.voided", "customer.*"])
    add(outbox, "invoices", event_types=["invoice.*"])
    add(outbox, "customers", event_types=["customer.*", "customer.vip.*", "customer.created"])
    for refused in (["refund.*"], ["invoice.created"], ["customer"], ["invoice"]):
        with pytest.raises(ConfigurationError, match=r"^event_types\[0\]: "):
            add(outbox, "refused", event_types=refused)
    paid = enqueue(db, outbox, "invoice.paid")
    vip = enqueue(db, outbox, "customer.vip.joined")
    assert [d.endpoint for d in outbox.deliveries(message_id=paid)] == ["invoices"]
    assert [d.endpoint for d in outbox.deliveries(message_id=vip)] == ["customers"]
    assert db.counts()["endpoints"] == 2


# -- claim and record ---------------------------------------------------------------------


def test_a_lower_sequence_number_due_later_is_still_claimed(db: Db, outbox: Outbox) -> None:
    """Rule 1 of ``_core`` on both databases: an older row that becomes due again after
    newer ones were delivered is claimed."""
    add(outbox, "acme")
    old, new = enqueue(db, outbox), enqueue(db, outbox)
    worker = db.worker(outbox)
    claimed = take(outbox, worker)
    assert [c.message_id for c in claimed] == [old, new]
    assert claimed[0].seq < claimed[1].seq
    outbox.record(worker, [delivered(c, T0) for c in claimed])
    assert outbox.resend(old, "acme") is True
    (again,) = outbox.claim(worker, limit=10, lease=60)
    assert (again.message_id, again.attempt) == (old, 1)


def test_a_message_committed_after_a_later_one_is_still_delivered(db: Db, outbox: Outbox) -> None:
    """Rule 1 of ``_core``: transaction A draws its sequence number first and commits
    last; a worker that remembered "the last id seen" would never send A's message."""
    if db.kind == "sqlite":
        pytest.skip("SQLite's writers never overlap: sequence order is commit order")
    add(outbox, "acme")
    a, b = db.app(), db.app()
    worker = db.worker(outbox)
    with transaction(a):
        slow = outbox.enqueue(a, "invoice.paid", {"who": "a"})
        with transaction(b):
            fast = outbox.enqueue(b, "invoice.paid", {"who": "b"})
        (first,) = outbox.claim(worker, limit=10, lease=60)
        assert first.message_id == fast
        assert outbox.record(worker, [delivered(first, T0)]) != []
    (second,) = outbox.claim(worker, limit=10, lease=60)
    assert second.message_id == slow
    assert second.seq < first.seq
    outbox.record(worker, [delivered(second, T0)])
    assert {d.message_id: d.state for d in outbox.deliveries()} == {
        fast: DELIVERED,
        slow: DELIVERED,
    }


def test_a_claim_respects_each_endpoints_concurrency(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "narrow", concurrency=2)
    add(outbox, "wide", concurrency=10)
    for _ in range(5):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    first = outbox.claim(worker, limit=100, lease=60)
    assert Counter(c.endpoint for c in first) == {"narrow": 2, "wide": 5}
    assert outbox.claim(worker, limit=100, lease=60) == []  # in-flight leases count
    narrow = sorted((c for c in first if c.endpoint == "narrow"), key=lambda c: c.seq)
    assert [o.claimed for o in outbox.record(worker, [delivered(narrow[0], T0)])] == narrow[:1]
    (one,) = outbox.claim(worker, limit=100, lease=60)
    assert one.endpoint == "narrow"
    assert (one.endpoint, one.seq) not in {(c.endpoint, c.seq) for c in first}
    clock.advance(60)  # every lease ran out: both in flight are claimable again
    second = outbox.claim(worker, limit=100, lease=60)
    assert Counter(c.endpoint for c in second) == {"narrow": 2, "wide": 5}
    assert {c.message_id for c in second if c.endpoint == "narrow"} == {
        narrow[1].message_id,
        one.message_id,
    }
    assert outbox.claim(worker, limit=1, lease=60) == []
    assert {s.endpoint: s.sending for s in outbox.stats()} == {"narrow": 2, "wide": 5}


def test_endpoints_at_their_concurrency_never_crowd_out_the_others(db: Db, outbox: Outbox) -> None:
    add(outbox, "busy", concurrency=1)
    add(outbox, "idle", concurrency=1)
    for _ in range(2):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    (held,) = outbox.claim(worker, limit=1, lease=60, endpoints=1)
    busy, idle = ("busy", "idle") if held.endpoint == "busy" else ("idle", "busy")
    conn = db.app()
    with transaction(conn):  # the full endpoint comes first in the claims' rotation
        conn.execute(f"UPDATE {db.prefix}_endpoints SET claimed_at = 0 WHERE name = '{busy}'")
        conn.execute(f"UPDATE {db.prefix}_endpoints SET claimed_at = 1 WHERE name = '{idle}'")
    conn.close()
    # "busy" still has a due delivery but no room: the one endpoint a claim may look at is "idle".
    again = outbox.claim(worker, limit=100, lease=60, endpoints=1)
    assert {c.endpoint for c in again} == {idle}


def test_a_claim_takes_at_most_limit(db: Db, outbox: Outbox) -> None:
    add(outbox, "a")
    add(outbox, "b")
    for _ in range(3):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    assert len(outbox.claim(worker, limit=4, lease=60)) == 4
    assert len(outbox.claim(worker, limit=4, lease=60)) == 2
    assert outbox.claim(worker, limit=4, lease=60) == []


def test_an_expired_lease_is_claimed_again_and_the_old_token_records_nothing(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    message_id = enqueue(db, outbox)
    worker, other = db.worker(outbox), db.worker(outbox)
    (old,) = outbox.claim(worker, limit=10, lease=30)
    assert old.attempt == 1
    clock.advance(29.9)
    assert outbox.claim(other, limit=10, lease=30) == []
    clock.advance(0.1)
    (new,) = outbox.claim(other, limit=10, lease=30)
    assert (new.message_id, new.attempt) == (message_id, 2)
    assert new.token != old.token

    assert outbox.record(worker, [delivered(old, clock.now())]) == []
    assert state_of(outbox, message_id, "acme") is SENDING
    assert outbox.attempts(message_id) == []
    assert outbox.endpoint("acme").failing_since is None
    assert (
        outbox.record(worker, [failed(old, clock.now(), state=FAILED, status=410, disable="gone")])
        == []
    )
    assert outbox.endpoint("acme").enabled

    outcome = delivered(new, clock.now())
    assert outbox.record(other, [outcome]) == [outcome]
    (d,) = outbox.deliveries()
    assert (d.state, d.attempts, d.last_status) == (DELIVERED, 2, 200)
    assert [(a.attempt, a.status) for a in outbox.attempts(message_id)] == [(2, 200)]
    assert outbox.record(other, [outcome]) == []  # recorded once only


def test_a_deferred_outcome_keeps_the_attempt_count(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    message_id = enqueue(db, outbox)
    worker = db.worker(outbox)
    (c,) = outbox.claim(worker, limit=10, lease=60)
    deferred = Outcome(c, PENDING, T0 + 10, False, T0, error="rate_limited")
    assert outbox.record(worker, [deferred]) == [deferred]
    (d,) = outbox.deliveries()
    assert (d.state, d.attempts, d.next_at) == (PENDING, 0, T0 + 10)
    assert outbox.attempts(message_id) == []
    assert outbox.endpoint("acme").failing_since is None
    clock.advance(9)
    assert outbox.claim(worker, limit=10, lease=60) == []
    clock.advance(1)
    (c,) = outbox.claim(worker, limit=10, lease=60)
    assert c.attempt == 1
    outbox.record(worker, [failed(c, clock.now(), next_at=clock.now() + 5, error="timeout")])
    clock.advance(5)
    (c,) = outbox.claim(worker, limit=10, lease=60)
    assert c.attempt == 2
    outbox.record(worker, [Outcome(c, PENDING, clock.now() + 1, False, clock.now())])
    (d,) = outbox.deliveries()
    assert (d.state, d.attempts, d.last_status, d.last_error) == (PENDING, 1, 500, "timeout")


def test_one_ordering_key_is_delivered_one_message_at_a_time(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    a1 = enqueue(db, outbox, ordering_key="customer-a")
    b1 = enqueue(db, outbox, ordering_key="customer-b")
    a2 = enqueue(db, outbox, ordering_key="customer-a")
    b2 = enqueue(db, outbox, ordering_key="customer-b")
    free = enqueue(db, outbox)
    worker = db.worker(outbox)
    first = outbox.claim(worker, limit=10, lease=60)
    assert ids(first) == {a1, b1, free}
    assert outbox.claim(worker, limit=10, lease=60) == []  # a1, b1 are in flight
    by_id = {c.message_id: c for c in first}
    outbox.record(
        worker,
        [
            delivered(by_id[a1], T0),
            failed(by_id[b1], T0, next_at=T0 + 5),
            delivered(by_id[free], T0),
        ],
    )
    (second,) = outbox.claim(worker, limit=10, lease=60)
    assert second.message_id == a2  # b1 is pending again: b2 waits behind it
    clock.advance(5)
    (retry,) = outbox.claim(worker, limit=10, lease=60)
    assert (retry.message_id, retry.attempt) == (b1, 2)
    outbox.record(worker, [failed(retry, clock.now(), state=FAILED)])
    (third,) = outbox.claim(worker, limit=10, lease=60)
    assert third.message_id == b2  # b1 failed for good: the key moves on


def test_ordering_keys_are_per_endpoint(db: Db, outbox: Outbox) -> None:
    add(outbox, "a")
    add(outbox, "b")
    first = enqueue(db, outbox, ordering_key="k")
    second = enqueue(db, outbox, ordering_key="k")
    worker = db.worker(outbox)
    claimed = outbox.claim(worker, limit=10, lease=60)
    assert {(c.endpoint, c.message_id) for c in claimed} == {("a", first), ("b", first)}
    outbox.record(worker, [delivered(c, T0) for c in claimed if c.endpoint == "a"])
    assert {(c.endpoint, c.message_id) for c in outbox.claim(worker, limit=10, lease=60)} == {
        ("a", second)
    }


def test_paused_and_disabled_endpoints_are_not_claimed(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "busy")
    add(outbox, "off")
    for _ in range(2):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    claimed = take(outbox, worker)
    busy = [c for c in claimed if c.endpoint == "busy"]
    off = [c for c in claimed if c.endpoint == "off"]
    pause = failed(busy[0], T0, status=429, next_at=T0 + 120, paused_until=T0 + 120)
    put_back = Outcome(off[1], PENDING, T0, False, T0, error="breaker_open")
    outbox.record(worker, [pause, delivered(busy[1], T0), delivered(off[0], T0), put_back])
    outbox.disable("off")
    assert outbox.claim(worker, limit=10, lease=60) == []
    clock.advance(119)
    assert outbox.claim(worker, limit=10, lease=60) == []
    clock.advance(1)
    (again,) = outbox.claim(worker, limit=10, lease=60)
    assert (again.endpoint, again.message_id) == ("busy", busy[0].message_id)
    outbox.enable("off")
    (back,) = outbox.claim(worker, limit=10, lease=60)
    assert (back.endpoint, back.message_id, back.attempt) == ("off", off[1].message_id, 1)


def test_a_shorter_pause_never_shortens_a_longer_one(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "busy")
    for _ in range(3):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    a, b, c = take(outbox, worker)
    outbox.record(
        worker,
        [
            failed(a, T0, status=503, next_at=T0 + 300, paused_until=T0 + 300),
            failed(b, T0, status=429, next_at=T0 + 10, paused_until=T0 + 10),
            failed(c, T0, status=500, next_at=T0 + 10),
        ],
    )
    clock.advance(299)
    assert outbox.claim(worker, limit=10, lease=60) == []
    clock.advance(1)
    assert len(outbox.claim(worker, limit=10, lease=60)) == 3


def test_gone_disables_the_endpoint_and_keeps_its_other_messages(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme", concurrency=1)
    add(outbox, "other")
    first, second = enqueue(db, outbox), enqueue(db, outbox)
    worker = db.worker(outbox)
    (c,) = [c for c in outbox.claim(worker, limit=10, lease=60) if c.endpoint == "acme"]
    assert c.message_id == first
    outbox.record(worker, [failed(c, T0, state=FAILED, status=410, disable="gone")])
    acme = outbox.endpoint("acme")
    assert (acme.enabled, acme.disabled_reason, acme.failing_since) == (False, "gone", T0)
    assert state_of(outbox, first, "acme") is FAILED
    assert outbox.endpoint("other").enabled
    assert outbox.claim(worker, limit=10, lease=60) == []  # other's are in flight
    assert state_of(outbox, second, "acme") is PENDING  # kept for when it is enabled
    outbox.enable("acme")
    assert outbox.endpoint("acme").disabled_reason is None
    (back,) = outbox.claim(worker, limit=10, lease=60)
    assert (back.endpoint, back.message_id) == ("acme", second)


def test_failing_since_is_set_by_a_failure_and_cleared_by_a_success(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    for _ in range(3):
        enqueue(db, outbox)
    worker = db.worker(outbox)
    a, b, c = take(outbox, worker, lease=600)
    outbox.record(worker, [failed(a, T0 + 1, next_at=T0 + 100, error="timeout", status=None)])
    assert outbox.endpoint("acme").failing_since == T0 + 1
    clock.advance(50)
    outbox.record(worker, [failed(b, T0 + 50, next_at=T0 + 100)])
    assert outbox.endpoint("acme").failing_since == T0 + 1  # the first failure's time
    (ca,) = [o.claimed for o in outbox.record(worker, [delivered(c, T0 + 51)])]
    assert ca is c
    assert outbox.endpoint("acme").failing_since is None
    clock.advance(60)
    (again,) = outbox.claim(worker, limit=1, lease=600)
    outbox.record(worker, [failed(again, clock.now(), next_at=clock.now() + 5)])
    assert outbox.endpoint("acme").failing_since == T0 + 110
    (d,) = outbox.deliveries(message_id=again.message_id)
    assert (d.attempts, d.last_status, d.next_at) == (2, 500, T0 + 115)
    (other,) = outbox.claim(worker, limit=10, lease=600)
    assert other.failing_since == T0 + 110  # what the worker judges the next failure by


# -- many workers at once -------------------------------------------------------------------


def _claim_together(
    outbox: Outbox, workers: list[Any], rounds: int, record: bool
) -> list[list[Claimed]]:
    """Every worker claims ``rounds`` times in its own thread, all starting together."""
    barrier = threading.Barrier(len(workers))
    taken: list[list[Claimed]] = [[] for _ in workers]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(GUARD)
            for _ in range(rounds):
                claimed = outbox.claim(workers[index], limit=3, lease=600)
                taken[index].extend(claimed)
                if record and claimed:
                    outbox.record(workers[index], [delivered(c, T0) for c in claimed])
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return taken


def test_workers_claiming_at_once_never_share_a_delivery_or_exceed_concurrency(
    db: Db, outbox: Outbox
) -> None:
    names = [f"e{i}" for i in range(4)]
    for name in names:
        add(outbox, name, concurrency=2)
    for _ in range(12):
        enqueue(db, outbox)
    workers = [db.worker(outbox) for _ in range(4)]

    held = [c for one in _claim_together(outbox, workers, rounds=10, record=False) for c in one]
    assert len({(c.endpoint, c.seq) for c in held}) == len(held)
    per_endpoint = Counter(c.endpoint for c in held)
    assert max(per_endpoint.values()) <= 2
    # Whatever room is left, one more claim takes it: the endpoints are full.
    held += outbox.claim(workers[0], limit=100, lease=600)
    assert Counter(c.endpoint for c in held) == dict.fromkeys(names, 2)
    outbox.record(workers[0], [delivered(c, T0) for c in held])

    sent = [c for one in _claim_together(outbox, workers, rounds=20, record=True) for c in one]
    while claimed := outbox.claim(workers[0], limit=100, lease=600):
        outbox.record(workers[0], [delivered(c, T0) for c in claimed])
        sent += claimed
    every = held + sent
    assert len({(c.endpoint, c.seq) for c in every}) == len(every) == 4 * 12
    assert {d.state for d in outbox.deliveries(limit=1000)} == {DELIVERED}


# -- admin ---------------------------------------------------------------------------------


def test_endpoints_never_show_their_secrets(db: Db, outbox: Outbox) -> None:
    ed = secret("ed", prefix="whsk_")
    made = add(outbox, "acme", secrets=[S1, ed], event_types=["invoice.*"], rate_limit="10/second")
    add(outbox, "globex", tenant="globex", concurrency=3)
    acme = outbox.endpoint("acme")
    assert made == acme
    assert acme == Endpoint(
        name="acme",
        tenant="default",
        url=f"{URL}/acme",
        event_types=("invoice.*",),
        rate_limit="10/second",
        concurrency=10,
        enabled=True,
        disabled_reason=None,
        failing_since=None,
        secrets=2,
    )
    for shown in (repr(acme), json.dumps(acme.as_dict()), repr(outbox.endpoints()), repr(outbox)):
        for s in (S1, ed):
            assert s not in shown
            assert s.split("_", 1)[1] not in shown
    assert [e.name for e in outbox.endpoints()] == ["acme", "globex"]
    assert [e.name for e in outbox.endpoints(tenant="globex")] == ["globex"]
    assert outbox.endpoints(tenant="nobody") == []
    assert outbox.endpoints(tenant="default", name="globex") == []
    with pytest.raises(KeyError):
        outbox.endpoint("nobody")
    worker = db.worker(outbox)
    enqueue(db, outbox)
    (c, *_) = outbox.claim(worker, limit=10, lease=60)
    assert c.secrets == (S1, ed)


def test_disable_and_enable(db: Db, outbox: Outbox, clock: ManualClock) -> None:
    add(outbox, "acme")
    before = enqueue(db, outbox)
    off = outbox.disable("acme", reason="maintenance")
    assert (off.enabled, off.disabled_reason) == (False, "maintenance")
    assert outbox.disable("acme", reason="other").disabled_reason == "maintenance"
    during = enqueue(db, outbox)  # a disabled endpoint gets no new deliveries
    assert outbox.deliveries(message_id=during) == []
    worker = db.worker(outbox)
    assert outbox.claim(worker, limit=10, lease=60) == []
    clock.advance(10)
    on = outbox.enable("acme")
    assert (on.enabled, on.disabled_reason, on.failing_since) == (True, None, None)
    (c,) = outbox.claim(worker, limit=10, lease=60)
    assert c.message_id == before
    with pytest.raises(KeyError):
        outbox.enable("nobody")
    with pytest.raises(KeyError):
        outbox.disable("nobody")


def test_enable_clears_failing_since_and_the_pause(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    enqueue(db, outbox)
    enqueue(db, outbox)
    worker = db.worker(outbox)
    a, _ = take(outbox, worker)
    outbox.record(
        worker, [failed(a, T0, status=429, next_at=T0, paused_until=T0 + 3600, disable="failing")]
    )
    acme = outbox.endpoint("acme")
    assert (acme.enabled, acme.disabled_reason, acme.failing_since) == (False, "failing", T0)
    outbox.enable("acme")
    assert outbox.endpoint("acme").failing_since is None
    (c,) = outbox.claim(worker, limit=10, lease=60)  # not paused any longer
    assert c.message_id == a.message_id


def test_rotate_secret_keeps_the_old_one_for_a_while(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme", secrets=[S1])
    for _ in range(4):
        enqueue(db, outbox)
    worker = db.worker(outbox)

    def signing() -> tuple[str, ...]:
        (c,) = outbox.claim(worker, limit=1, lease=60)
        outbox.record(worker, [delivered(c, clock.now())])
        return c.secrets

    assert signing() == (S1,)
    rotated = outbox.rotate_secret("acme", S2, keep_old_for=3600)
    assert rotated.secrets == 2
    assert S1 not in repr(rotated)
    assert S2 not in repr(rotated)
    clock.advance(3599)
    assert signing() == (S2, S1)
    clock.advance(1)
    assert signing() == (S2,)
    assert outbox.endpoint("acme").secrets == 1
    outbox.rotate_secret("acme", S3, keep_old_for=0)
    assert signing() == (S3,)
    stored = db.query(f"SELECT secrets FROM {db.prefix}_endpoints")[0][0]
    assert S1 not in stored  # an expired secret is dropped for good

    with pytest.raises(ConfigurationError, match=r"^secret: ") as raised:
        outbox.rotate_secret("acme", secret("short", 8))
    assert secret("short", 8) not in str(raised.value)
    with pytest.raises(ConfigurationError, match=r"^keep_old_for: "):
        outbox.rotate_secret("acme", S1, keep_old_for=-1)
    with pytest.raises(KeyError):
        outbox.rotate_secret("nobody", S1)
    assert outbox.endpoint("acme").secrets == 1


def test_rotating_often_keeps_at_most_five_secrets(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme", secrets=[S1])
    for i in range(7):
        outbox.rotate_secret("acme", secret(f"r{i}"), keep_old_for=3600)
    assert outbox.endpoint("acme").secrets == 5
    enqueue(db, outbox)
    (c,) = outbox.claim(db.worker(outbox), limit=1, lease=60)
    assert c.secrets == tuple(secret(f"r{i}") for i in (6, 5, 4, 3, 2))


def test_remove_endpoint_deletes_its_deliveries_and_attempts(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    add(outbox, "other")
    message_id = enqueue(db, outbox)
    worker = db.worker(outbox)
    outbox.record(worker, [delivered(c, T0) for c in outbox.claim(worker, limit=10, lease=60)])
    assert db.counts() == {"endpoints": 2, "messages": 1, "deliveries": 2, "attempts": 2}
    outbox.remove_endpoint("acme")
    assert db.counts() == {"endpoints": 1, "messages": 1, "deliveries": 1, "attempts": 1}
    assert [a.endpoint for a in outbox.attempts(message_id)] == ["other"]
    with pytest.raises(KeyError):
        outbox.endpoint("acme")
    with pytest.raises(KeyError):
        outbox.remove_endpoint("acme")
    assert db.counts()["endpoints"] == 1


def test_deliveries_filters(db: Db, outbox: Outbox, clock: ManualClock) -> None:
    add(outbox, "a")
    add(outbox, "b", event_types=["invoice.paid"])
    m1 = enqueue(db, outbox)
    clock.advance(1)
    m2 = enqueue(db, outbox, "invoice.voided")
    clock.advance(1)
    m3 = enqueue(db, outbox)
    worker = db.worker(outbox)
    claimed = {(c.endpoint, c.message_id): c for c in outbox.claim(worker, limit=10, lease=60)}
    outbox.record(
        worker,
        [
            delivered(claimed["a", m1], clock.now()),
            failed(claimed["b", m1], clock.now(), state=FAILED, status=400),
        ],
    )

    def keys(ds: list[Any]) -> list[tuple[str, str]]:
        return [(d.message_id, d.endpoint) for d in ds]

    assert [d.message_id for d in outbox.deliveries(endpoint="a")] == [m3, m2, m1]
    assert keys(outbox.deliveries(message_id=m1, endpoint="b")) == [(m1, "b")]
    assert keys(outbox.deliveries(state="failed")) == [(m1, "b")]
    assert keys(outbox.deliveries(state=DELIVERED)) == [(m1, "a")]
    assert set(keys(outbox.deliveries(state=SENDING))) == {(m2, "a"), (m3, "a"), (m3, "b")}
    assert outbox.deliveries(state=PENDING) == []
    assert [d.message_id for d in outbox.deliveries(limit=2)] == [m3, m3]
    assert outbox.deliveries(message_id="msg_unknown") == []
    (d,) = outbox.deliveries(message_id=m1, endpoint="b")
    assert d.as_dict() == {
        "message_id": m1,
        "endpoint": "b",
        "event_type": "invoice.paid",
        "state": "failed",
        "attempts": 1,
        "next_at": None,
        "last_status": 400,
        "last_error": None,
        "created_at": T0,
        "updated_at": T0 + 2,
    }
    with pytest.raises(ValueError, match="lost"):
        outbox.deliveries(state="lost")


def test_attempts_are_listed_oldest_first(db: Db, outbox: Outbox, clock: ManualClock) -> None:
    add(outbox, "a")
    add(outbox, "b")
    message_id = enqueue(db, outbox)
    worker = db.worker(outbox)
    for step in range(3):
        claimed = sorted(outbox.claim(worker, limit=10, lease=60), key=lambda c: c.endpoint)
        assert len(claimed) == 2
        outcomes = [
            failed(c, clock.now(), next_at=clock.now() + 10, status=500 + step, latency=0.5)
            for c in reversed(claimed)
        ]
        outbox.record(worker, outcomes)
        clock.advance(10)
    attempts = outbox.attempts(message_id)
    assert [(a.endpoint, a.attempt, a.status, a.at) for a in attempts] == [
        ("a", 1, 500, T0),
        ("a", 2, 501, T0 + 10),
        ("a", 3, 502, T0 + 20),
        ("b", 1, 500, T0),
        ("b", 2, 501, T0 + 10),
        ("b", 3, 502, T0 + 20),
    ]
    assert [a.attempt for a in outbox.attempts(message_id, endpoint="b")] == [1, 2, 3]
    assert attempts[0].as_dict() == {
        "message_id": message_id,
        "endpoint": "a",
        "attempt": 1,
        "at": T0,
        "status": 500,
        "error": None,
        "latency": 0.5,
    }
    assert outbox.attempts("msg_unknown") == []


def test_resend_only_a_delivered_or_failed_message(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    done, gone, waiting, flying = (enqueue(db, outbox) for _ in range(4))
    worker = db.worker(outbox)
    claimed = {c.message_id: c for c in outbox.claim(worker, limit=10, lease=60)}
    outbox.record(
        worker,
        [
            delivered(claimed[done], T0),
            failed(claimed[gone], T0, state=FAILED, status=400),
            failed(claimed[waiting], T0, next_at=T0 + 300),
        ],
    )
    clock.advance(10)
    assert outbox.resend(waiting, "acme") is False
    assert outbox.resend(flying, "acme") is False
    with pytest.raises(KeyError, match="nobody"):  # no delivery of it to that endpoint
        outbox.resend(done, "nobody")
    assert outbox.resend(done, "acme") is True
    assert outbox.resend(gone, "acme") is True
    with pytest.raises(KeyError):
        outbox.resend("msg_unknown", "acme")
    for message_id in (done, gone):
        (d,) = outbox.deliveries(message_id=message_id)
        assert (d.state, d.attempts, d.next_at, d.updated_at) == (PENDING, 0, T0 + 10, T0 + 10)
    assert {c.message_id: c.attempt for c in outbox.claim(worker, limit=10, lease=60)} == {
        done: 1,
        gone: 1,
    }


def test_recover_requeues_failed_deliveries_since_a_time(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    add(outbox, "other")
    made = []
    for _ in range(3):
        made.append(enqueue(db, outbox))
        clock.advance(100)
    worker = db.worker(outbox)
    outbox.record(
        worker,
        [
            failed(c, clock.now(), state=FAILED, status=404)
            for c in outbox.claim(worker, limit=10, lease=60)
        ],
    )
    assert outbox.recover("acme", since=T0 + 100) == 2
    assert {d.message_id: d.state for d in outbox.deliveries(endpoint="acme")} == {
        made[0]: FAILED,
        made[1]: PENDING,
        made[2]: PENDING,
    }
    assert {d.state for d in outbox.deliveries(endpoint="other")} == {FAILED}
    assert outbox.recover("acme", since=T0 + 100) == 0  # pending ones are left alone
    assert outbox.recover("acme", since=T0 + 201) == 0
    with pytest.raises(KeyError):
        outbox.recover("nobody", since=T0)
    claimed = outbox.claim(worker, limit=10, lease=60)
    assert {(c.endpoint, c.message_id, c.attempt) for c in claimed} == {
        ("acme", made[1], 1),
        ("acme", made[2], 1),
    }


def test_stats_count_each_endpoints_backlog(db: Db, outbox: Outbox, clock: ManualClock) -> None:
    add(outbox, "acme")
    add(outbox, "idle", event_types=["never.sent"])
    for _ in range(4):
        enqueue(db, outbox)
        clock.advance(10)
    worker = db.worker(outbox)
    a, b, c = take(outbox, worker, limit=3)
    outbox.record(worker, [delivered(a, clock.now()), failed(b, clock.now(), state=FAILED)])
    outbox.disable("idle")
    clock.advance(5)
    stats = {s.endpoint: s for s in outbox.stats()}
    assert stats.keys() == {"acme", "idle"}
    acme = stats["acme"]
    assert (acme.enabled, acme.pending, acme.sending, acme.failed) == (True, 1, 1, 1)
    assert acme.oldest_undelivered == 25.0  # c, recorded at T0 + 20, in flight
    idle = stats["idle"]
    assert (idle.enabled, idle.pending, idle.sending, idle.failed) == (False, 0, 0, 0)
    assert idle.oldest_undelivered is None
    outbox.record(worker, [delivered(c, clock.now())])
    (d,) = outbox.claim(worker, limit=3, lease=60)
    outbox.record(worker, [delivered(d, clock.now())])
    assert outbox.stats()[0].oldest_undelivered is None


def test_recover_queues_what_an_endpoint_missed_while_disabled(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    early = enqueue(db, outbox, "invoice.paid")  # before the endpoint existed: never its own
    clock.advance(10)
    add(outbox, "acme", event_types=["invoice.*"])
    outbox.disable("acme")
    clock.advance(10)
    missed = [enqueue(db, outbox, "invoice.paid"), enqueue(db, outbox, "invoice.voided")]
    enqueue(db, outbox, "refund.created")  # not a type it accepts
    enqueue(db, outbox, "invoice.paid", tenant="other")  # not its tenant
    assert outbox.deliveries(endpoint="acme") == []
    outbox.enable("acme")
    assert outbox.recover("acme", since=T0) == 2
    assert {d.message_id for d in outbox.deliveries(endpoint="acme")} == set(missed)
    assert early not in {c.message_id for c in outbox.claim(db.worker(outbox), limit=10, lease=60)}
    assert outbox.recover("acme", since=T0) == 0  # queued once


def test_a_resent_delivery_keeps_every_attempt(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    message_id = enqueue(db, outbox)
    worker = db.worker(outbox)
    for _ in range(2):  # the same attempt number at the same time, twice
        (c,) = outbox.claim(worker, limit=1, lease=60)
        outbox.record(worker, [delivered(c, T0)])
        assert outbox.resend(message_id, "acme")
    assert [a.attempt for a in outbox.attempts(message_id)] == [1, 1]


def test_purge_deletes_only_what_is_past_retention_and_waits_for_nothing(
    db: Db, clock: ManualClock
) -> None:
    outbox = db.outbox(schedule=[0, 60], retention=3600)
    add(outbox, "acme")
    old_done, old_waiting = enqueue(db, outbox), enqueue(db, outbox)
    worker = db.worker(outbox)
    claimed = {c.message_id: c for c in outbox.claim(worker, limit=10, lease=60)}
    outbox.record(worker, [delivered(claimed[old_done], T0)])
    clock.advance(3600)
    young = enqueue(db, outbox)
    (c,) = [c for c in outbox.claim(worker, limit=10, lease=60) if c.message_id == young]
    outbox.record(worker, [delivered(c, clock.now())])
    clock.advance(1)
    assert outbox.purge() == 1  # the old delivered one; the old one in flight waits
    assert outbox.attempts(old_done) == []
    assert {d.message_id for d in outbox.deliveries()} == {old_waiting, young}
    assert outbox.purge() == 0


def test_disable_takes_a_reason_of_printable_text(db: Db, outbox: Outbox) -> None:
    add(outbox, "acme")
    for reason in ("", "x" * 201, "line\nbreak", 5):
        with pytest.raises(ConfigurationError, match=r"^reason: "):
            outbox.disable("acme", reason)  # type: ignore[arg-type]
    assert outbox.disable("acme", "moved to v2").disabled_reason == "moved to v2"
    assert outbox.disable("acme", "again").disabled_reason == "moved to v2"


def test_recover_sends_what_waits_for_its_next_attempt_now(
    db: Db, outbox: Outbox, clock: ManualClock
) -> None:
    add(outbox, "acme")
    message_id = enqueue(db, outbox)
    worker = db.worker(outbox)
    (c,) = outbox.claim(worker, limit=1, lease=60)
    outbox.record(worker, [failed(c, T0, next_at=T0 + 300)])
    clock.advance(1)
    assert outbox.claim(worker, limit=1, lease=60) == []  # 5 minutes to go
    assert outbox.recover("acme", since=T0) == 1
    (again,) = outbox.claim(worker, limit=1, lease=60)
    assert (again.message_id, again.attempt) == (message_id, 2)  # its count goes on
    assert outbox.recover("acme", since=T0) == 0  # in flight: nothing to hurry


def test_a_connection_the_server_dropped_is_opened_again(db: Db, outbox: Outbox) -> None:
    if db.kind != "postgres":
        pytest.skip("a SQLite file is never dropped by a server")
    add(outbox, "acme")
    (pid,) = [row[0] for row in _backend_pids(outbox)]
    with psycopg.connect(db.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable):
        outbox.endpoints()  # the call that finds it dropped fails...
    assert [e.name for e in outbox.endpoints()] == ["acme"]  # ...and the next one reconnects


def _backend_pids(outbox: Outbox) -> list[tuple[Any, ...]]:
    with outbox._connection().transaction() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return list(cursor.fetchall())
