"""Sagas across real worker processes that are killed at every step boundary and inside
steps, over SQLite and PostgreSQL.

The partner is an HTTP server in the test process (``Partner``) that honours
``Idempotency-Key`` (the same key gets the first answer again, never a second effect) and
keeps a ledger of its effects, plus a count of each saga's requests in flight: two at
once would mean two workers running the same saga. Workers are spawned processes running
``SagaWorker.run()`` (``_saga_workers``); the saga's input names its crash points, each
of which kills the first worker that reaches it, the step the partner refuses for good
(402: the saga turns back) and the undo it cannot do (500 every time: the saga needs
attention). A ``Pool`` keeps a number of workers
alive, replacing each one that dies, so a killed worker's saga is taken over by another
once its lease runs out. Time is real here, so leases are short and every wait is a
bounded poll on the saga's state.

The promises checked for every saga (``assert_sound``): it ends completed, compensated or
needs_attention, never half-done; each action's effect happens at most once, each undo
at most once and only after its action; a completed saga has every effect and no undo, a
compensated one has every effect it made undone; no charge is left standing without its
shipment or its refund unless the saga needs attention; no two requests of one saga were
ever in flight at once.

``SUREFOOT_SAGA_SOAK=1`` adds larger runs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from _saga_workers import FUNCTIONS, STEPS, UNDO, WHERE, build_saga, crash_marker, saga_worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support import GUARD, SPAWN
from surefoot.saga import SagaLog, SagaRun

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

SOAK = os.environ.get("SUREFOOT_SAGA_SOAK") == "1"
soak = pytest.mark.skipif(not SOAK, reason="a soak run: set SUREFOOT_SAGA_SOAK=1")

LEASE = 2.5
WORKER = {"lease": LEASE, "poll_interval": 0.05, "step_timeout": 10.0}
FINISHED = ("completed", "compensated", "needs_attention", "resolved")
HOLD = 0.01  # how long the partner holds each request: a window in which overlaps show


# -- the partner -----------------------------------------------------------------------------


@dataclass
class Partner:
    """An idempotent partner: ``effects`` (kind, saga id, key) one per effect, ``requests``
    (kind, saga id, key, replayed) one per request, ``overlaps`` the saga ids that had
    two requests in flight at once."""

    effects: list[tuple[str, str, str]] = field(default_factory=list)
    requests: list[tuple[str, str, str, bool]] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, kind: str, key: str | None, body: dict[str, Any]) -> tuple[int, bytes]:
        saga = str(body.get("saga"))
        with self.lock:
            self.in_flight[saga] += 1
            if self.in_flight[saga] > 1:
                self.overlaps.append(saga)
        try:
            self.work()
            with self.lock:
                if key is None or kind not in FUNCTIONS:
                    self.requests.append((kind, saga, str(key), False))
                    return 400, b'{"error":"an Idempotency-Key is required"}'
                replayed = key in self.answers
                self.requests.append((kind, saga, key, replayed))
                if body.get("broken"):
                    return 500, b'{"error":"broken"}'  # an outage: nothing kept
                if not replayed:
                    if body.get("fail"):
                        self.answers[key] = (402, b'{"error":"refused"}')
                    else:
                        self.effects.append((kind, saga, key))
                        answer = {"id": f"{kind}-{len(self.effects)}"}
                        self.answers[key] = (200, json.dumps(answer).encode())
                return self.answers[key]
        finally:
            with self.lock:
                self.in_flight[saga] -= 1

    def work(self) -> None:
        """The partner's work: a window in which another worker's request would overlap."""
        time.sleep(HOLD)

    def effects_of(self, saga_id: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(kind, key) for kind, saga, key in self.effects if saga == saga_id]

    def requests_of(self, saga_id: str) -> list[tuple[str, str, bool]]:
        with self.lock:
            return [(k, key, r) for k, saga, key, r in self.requests if saga == saga_id]


def serve(partner: Partner) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            key = self.headers.get("idempotency-key")
            status, payload = partner.handle(self.path.strip("/"), key, body)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    partner.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def partner() -> Iterator[Partner]:
    found = Partner()
    server = serve(found)
    yield found
    server.shutdown()
    server.server_close()


# -- workers ---------------------------------------------------------------------------------


@dataclass
class Pool:
    """``size`` worker processes over one database; ``replenish`` replaces the dead ones
    (their exit codes go to ``deaths``)."""

    database: str
    prefix: str
    partner: Partner
    crash_dir: Path
    size: int
    settings: dict[str, Any] = field(default_factory=lambda: dict(WORKER))
    workers: list[BaseProcess] = field(default_factory=list)
    deaths: list[int | None] = field(default_factory=list)
    # Each worker's "ready" event, kept alive until the worker has unpickled it.
    events: list[Any] = field(default_factory=list)

    def replenish(self, wait: bool = False) -> None:
        """Replace the dead workers; with ``wait``, return once each new one claims."""
        started = []
        for process in [p for p in self.workers if not p.is_alive()]:
            process.join(GUARD)
            self.workers.remove(process)
            self.deaths.append(process.exitcode)
        while len(self.workers) < self.size:
            ready = SPAWN.Event()
            args = (self.database, self.prefix, self.partner.url, self.crash_dir, self.settings)
            process = SPAWN.Process(target=saga_worker, args=(*args, ready), daemon=True)
            process.start()
            self.workers.append(process)
            started.append(ready)
            self.events.append(ready)
        if wait:
            assert all(ready.wait(GUARD) for ready in started), "a worker never started"

    def close(self) -> None:
        for process in self.workers:
            if process.is_alive():
                process.kill()
        for process in self.workers:
            process.join(GUARD)
        self.workers.clear()


@dataclass
class Db:
    url: str
    prefix: str
    log: SagaLog

    def start(
        self,
        saga_id: str,
        fail: str | None = None,
        crash: tuple[str, ...] = (),
        broken: str | None = None,
    ) -> None:
        given = {"fail": fail, "crash": list(crash), "broken": broken}
        self.log.start(build_saga(), saga_id, given)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            for table in ("runs", "log"):
                pg.execute(f"DROP TABLE IF EXISTS {self.prefix}_{table}")


def make_db(url: str) -> Db:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    log = SagaLog(url, prefix=prefix)
    log.create_tables()
    return Db(url, prefix, log)


def new_id() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def sqlite(tmp_path_factory: pytest.TempPathFactory, partner: Partner) -> Iterator[tuple[Db, Pool]]:
    """One SQLite database for the module's crash tests, served by two workers (each
    saga has an id of its own)."""
    folder = tmp_path_factory.mktemp("sagas")
    db = make_db(f"sqlite:///{folder}/app.db")
    crash_dir = folder / "crashes"
    crash_dir.mkdir()
    pool = Pool(db.url, db.prefix, partner, crash_dir, size=2)
    pool.replenish(wait=True)
    yield db, pool
    pool.close()
    db.log.close()


@pytest.fixture
def postgres(postgres_dsn: str) -> Iterator[Db]:
    """The saga tables under a prefix of the test's own, dropped afterwards."""
    db = make_db(postgres_dsn)
    yield db
    db.log.close()
    db.drop()


def wait_finished(db: Db, pool: Pool, saga_ids: list[str], guard: float = GUARD) -> list[SagaRun]:
    """Poll until every saga is finished, replacing the pool's dead workers meanwhile
    (at most ``guard`` seconds, then fail)."""
    deadline = time.monotonic() + guard
    while True:
        pool.replenish()
        runs = [db.log.get(saga_id) for saga_id in saga_ids]
        if all(run is not None and run.state in FINISHED for run in runs):
            return [run for run in runs if run is not None]
        shown = {r.id: r.state for r in runs if r is not None}
        assert time.monotonic() < deadline, f"timed out waiting for the sagas: {shown}"
        time.sleep(0.05)


def assert_sound(partner: Partner, run: SagaRun, fail: str | None) -> None:
    """The promises every saga keeps, checked on the partner's ledger."""
    effects = partner.effects_of(run.id)
    seen = collections.Counter(kind for kind, _ in effects)
    shown = f"{run.state} {run.error}: {effects}"
    assert run.state in ("completed", "compensated", "needs_attention"), shown
    assert all(count == 1 for count in seen.values()), f"an effect twice: {shown}"
    for kind, key in effects:  # each under the key the worker derives, whoever sent it
        step = next(s for s in STEPS if kind in (s, UNDO[s]))
        assert key == f"saga:{run.id}:{step}{'' if kind == step else ':undo'}:1", shown
    for step, undo in UNDO.items():
        assert seen[undo] <= seen[step], f"{undo} without {step}: {shown}"
    if fail is not None:
        assert seen[fail] == 0, shown  # the partner refused it: no effect
    if run.state == "completed":
        assert fail is None, shown
        assert seen == dict.fromkeys(STEPS, 1), shown
    elif run.state == "compensated":
        assert fail is not None, shown
        before = STEPS[: STEPS.index(fail)]
        assert seen == dict.fromkeys([*before, *(UNDO[s] for s in before)], 1), shown
    if run.state != "needs_attention" and seen["charge"]:
        assert seen["ship"] or seen["refund"], f"a charge left standing: {shown}"
    assert run.id not in partner.overlaps, f"two requests of one saga at once: {shown}"


def test_the_partner_sees_two_requests_of_one_saga_in_flight_and_each_key_once() -> None:
    """The oracle can fail: two requests of a saga at once are an overlap, a key's second
    request is a replay without a second effect, a keyless request is refused."""
    both = threading.Barrier(2, timeout=GUARD)

    class Meeting(Partner):
        def work(self) -> None:
            both.wait()  # each request waits until the other one is in flight too

    oracle = Meeting()
    body = {"saga": "s1", "fail": False}
    threads = [
        threading.Thread(target=oracle.handle, args=("charge", key, body)) for key in ("k1", "k2")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert oracle.overlaps == ["s1"]
    both = threading.Barrier(1, timeout=GUARD)
    assert oracle.handle("charge", "k1", body)[0] == 200
    assert oracle.handle("refund", None, body)[0] == 400
    assert sorted(oracle.effects_of("s1")) == [("charge", "k1"), ("charge", "k2")]
    assert sorted(oracle.requests_of("s1"))[-1] == ("refund", "None", False)
    assert ("charge", "k1", True) in oracle.requests_of("s1")


# -- every crash point, one at a time ----------------------------------------------------


FORWARD: list[tuple[str, str | None]] = [(f"{s}:{w}", None) for s in STEPS for w in WHERE]
# A refused shipment turns the saga back: release and refund run, and may die too.
BACKWARD = [(f"{undo}:{where}", "ship") for undo in ("refund", "release") for where in WHERE]
# Dying on the refused step itself, before, at or after its 402.
REFUSED = [(f"charge:{where}", "charge") for where in WHERE]


@pytest.mark.parametrize(("point", "fail"), [*FORWARD, *BACKWARD, *REFUSED])
def test_a_worker_killed_at_a_crash_point_leaves_the_saga_to_another_which_finishes_it(
    sqlite: tuple[Db, Pool], partner: Partner, point: str, fail: str | None
) -> None:
    db, pool = sqlite
    saga_id = new_id()
    deaths = len(pool.deaths)
    db.start(saga_id, fail, (point,))
    [run] = wait_finished(db, pool, [saga_id])
    assert crash_marker(pool.crash_dir, saga_id, point).exists()  # it did die there
    pool.replenish()
    assert pool.deaths[deaths:] == [-signal.SIGKILL]
    assert run.state == ("completed" if fail is None else "compensated")
    assert_sound(partner, run, fail)
    function, where = point.split(":")
    sent = [(kind, replayed) for kind, _, replayed in partner.requests_of(saga_id)]
    if where == "before":  # the partner never heard of the dead worker's call
        assert sent.count((function, True)) == 0
    else:  # it answered the dead worker, and the next one got that answer again
        assert sent.count((function, False)) == 1
        assert sent.count((function, True)) == 1
    timeline = [(e.kind, e.step) for e in db.log.timeline(saga_id)]
    step = next(s for s in STEPS if function in (s, UNDO[s]))
    kind = "started" if function == step else "compensating"
    assert timeline.count((kind, step)) == 2  # recorded before each call (Rule 1)


# -- crashes and failures drawn by Hypothesis -------------------------------------------------


# ``cancel`` never runs here: a shipment that is done completes the saga.
POINTS = st.sampled_from([f"{f}:{w}" for f in FUNCTIONS if f != "cancel" for w in WHERE])


def expected(fail: str | None, broken: str | None) -> tuple[str, list[str], list[str]]:
    """The state a saga ends in, the functions called on its way (in order) and the
    effects it leaves on the partner's ledger, whatever crashes it went through."""
    if fail is None:
        return "completed", list(STEPS), list(STEPS)
    done = list(STEPS[: STEPS.index(fail)])
    called, effects = [*done, fail], list(done)
    for step in reversed(done):  # undone in reverse order, up to a broken undo
        called.append(UNDO[step])
        if UNDO[step] == broken:
            return "needs_attention", called, effects
        effects.append(UNDO[step])
    return "compensated", called, effects


def crashes_and_failures(
    sqlite: tuple[Db, Pool],
    partner: Partner,
    crash: list[str],
    fail: str | None,
    broken: str | None,
) -> None:
    db, pool = sqlite
    saga_id = new_id()
    deaths = len(pool.deaths)
    db.start(saga_id, fail, tuple(crash), broken)
    [run] = wait_finished(db, pool, [saga_id])
    assert_sound(partner, run, fail)
    state, called, effects = expected(fail, broken)
    assert run.state == state, run.error
    assert sorted(kind for kind, _ in partner.effects_of(saga_id)) == sorted(effects)
    # Every crash point the saga's path goes through fired, once, killing its worker.
    fired = [p for p in crash if crash_marker(pool.crash_dir, saga_id, p).exists()]
    assert fired == [p for p in crash if p.split(":")[0] in called]
    pool.replenish()
    assert pool.deaths[deaths:] == [-signal.SIGKILL] * len(fired)


DRAWN = {
    "crash": st.lists(POINTS, min_size=1, max_size=2, unique=True),
    "fail": st.sampled_from([None, *STEPS]),
    "broken": st.sampled_from([None, "refund", "release"]),
}
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays stable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(FUZZ, max_examples=12)
@given(**DRAWN)
def test_any_crashes_and_failures_end_a_saga_done_or_undone_with_each_effect_once(
    sqlite: tuple[Db, Pool],
    partner: Partner,
    crash: list[str],
    fail: str | None,
    broken: str | None,
) -> None:
    crashes_and_failures(sqlite, partner, crash, fail, broken)


@soak
@settings(FUZZ, max_examples=200)
@given(**DRAWN)
def test_many_crashes_and_failures_end_a_saga_done_or_undone_with_each_effect_once(
    sqlite: tuple[Db, Pool],
    partner: Partner,
    crash: list[str],
    fail: str | None,
    broken: str | None,
) -> None:
    crashes_and_failures(sqlite, partner, crash, fail, broken)


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.parametrize(("point", "fail"), [("charge:inside", None), ("refund:after", "ship")])
def test_on_postgres_a_worker_killed_inside_a_step_leaves_the_saga_to_another(
    postgres: Db, partner: Partner, tmp_path: Path, point: str, fail: str | None
) -> None:
    pool = Pool(postgres.url, postgres.prefix, partner, tmp_path, size=2)
    try:
        saga_id = new_id()
        postgres.start(saga_id, fail, (point,))
        pool.replenish()
        [run] = wait_finished(postgres, pool, [saga_id])
        pool.replenish()
    finally:
        pool.close()
    assert crash_marker(tmp_path, saga_id, point).exists()
    assert pool.deaths == [-signal.SIGKILL]
    assert run.state == ("completed" if fail is None else "compensated")
    assert_sound(partner, run, fail)
    function = point.split(":")[0]
    sent = [replayed for kind, _, replayed in partner.requests_of(saga_id) if kind == function]
    assert sent == [False, True]  # answered to the dead worker, then again to the next


# -- two workers at once ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [20, pytest.param(200, marks=soak)])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_workers_at_once_run_each_saga_alone_and_each_effect_once(
    request: pytest.FixtureRequest, partner: Partner, tmp_path: Path, kind: str, size: int
) -> None:
    db = make_db(
        f"sqlite:///{tmp_path}/app.db"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_dsn")
    )
    sagas = {new_id(): [None, None, "charge", "ship"][n % 4] for n in range(size)}
    pool = Pool(db.url, db.prefix, partner, tmp_path, size=2, settings={**WORKER, "concurrency": 4})
    try:
        pool.replenish(wait=True)  # both claim from the start
        for saga_id, fail in sagas.items():
            db.start(saga_id, fail)
        runs = wait_finished(db, pool, list(sagas), guard=GUARD if size <= 20 else 300)
        pool.replenish()
        assert pool.deaths == []
        owners = {e.actor for saga_id in sagas for e in db.log.timeline(saga_id)} - {"app"}
    finally:
        pool.close()
        db.log.close()
        if kind == "postgres":
            db.drop()
    for run in runs:
        assert run.state == ("completed" if sagas[run.id] is None else "compensated")
        assert_sound(partner, run, sagas[run.id])
    assert len(owners) == 2  # both took part
