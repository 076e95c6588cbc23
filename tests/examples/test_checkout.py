"""examples/checkout: the checkout saga against the three partners, served by a real
uvicorn on a free port (a timeout needs a real connection to time out)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from examples.checkout.checkout import build
from examples.checkout.orders import order
from examples.checkout.partners import Faults, create_app, read_ledger

from _support import GUARD, free_port
from surefoot.client import RetryPolicy
from surefoot.saga import Saga, SagaLog, SagaWorker
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

Serve = Callable[[Faults], str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start the partners (ledger ``tmp_path/partners.db``); their base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(faults: Faults) -> str:
        port = free_port()
        app = create_app(str(tmp_path / "partners.db"), faults)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + GUARD
        while not server.started:  # waits for a condition, with a deadline
            assert time.monotonic() < deadline, "the partners did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(GUARD)


@pytest.fixture
async def transport() -> AsyncIterator[httpx.AsyncHTTPTransport]:
    """The connections of the saga's client, closed at the end of the test."""
    async with httpx.AsyncHTTPTransport() as transport:
        yield transport


Build = Callable[[str], Saga]


@pytest.fixture
def make_saga(transport: httpx.AsyncHTTPTransport) -> Build:
    def make(url: str) -> Saga:
        # Two short attempts per call: a charge that timed out is left to the saga's lookup.
        policy = RetryPolicy(max_attempts=2, attempt_timeout=0.3, backoff_base=0.01)
        return build(url, transport=transport, retry=policy)

    return make


async def test_an_order_is_reserved_charged_and_shipped(
    serve: Serve, make_saga: Build, tmp_path: Path, clock: ManualClock
) -> None:
    saga = make_saga(serve(Faults()))
    log = SagaLog(f"sqlite:///{tmp_path / 'checkout.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [saga], hooks=())
    run = await worker.start(saga, "order-1", order(1))
    await worker.aclose()

    assert run.state == "completed"
    ledger = read_ledger(str(tmp_path / "partners.db"))
    assert [state for _, state in ledger.reservations["order-1"]] == ["reserved"]
    assert len(ledger.charges["order-1"]) == 1
    assert ledger.refunds == {}
    assert len(ledger.shipments["order-1"]) == 1


async def test_a_refused_shipment_refunds_the_charge_and_releases_the_stock(
    serve: Serve, make_saga: Build, tmp_path: Path, clock: ManualClock
) -> None:
    saga = make_saga(serve(Faults()))
    log = SagaLog(f"sqlite:///{tmp_path / 'checkout.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [saga], hooks=())
    assert order(4)["address"] == "1 Nowhere Lane"
    run = await worker.start(saga, "order-4", order(4))
    await worker.aclose()

    assert run.state == "compensated"
    assert [s["state"] for s in run.steps] == ["compensated", "compensated", "failed"]
    ledger = read_ledger(str(tmp_path / "partners.db"))
    assert [state for _, state in ledger.reservations["order-4"]] == ["released"]
    (charge,) = ledger.charges["order-4"]
    assert charge in ledger.refunds
    assert "order-4" not in ledger.shipments


async def test_a_declined_card_releases_the_stock_and_refunds_nothing(
    serve: Serve, make_saga: Build, tmp_path: Path, clock: ManualClock
) -> None:
    saga = make_saga(serve(Faults()))
    log = SagaLog(f"sqlite:///{tmp_path / 'checkout.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [saga], hooks=())
    run = await worker.start(saga, "order-3", order(3))
    await worker.aclose()

    assert run.state == "compensated"
    ledger = read_ledger(str(tmp_path / "partners.db"))
    assert [state for _, state in ledger.reservations["order-3"]] == ["released"]
    assert "order-3" not in ledger.charges
    assert ledger.refunds == {}


async def test_a_charge_that_timed_out_is_found_by_the_lookup_not_charged_again(
    serve: Serve, make_saga: Build, tmp_path: Path, clock: ManualClock
) -> None:
    # Every charge request of order-2 is charged, then never answered.
    saga = make_saga(serve(Faults(timeout=1.0, references=frozenset({"order-2"}))))
    log = SagaLog(f"sqlite:///{tmp_path / 'checkout.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [saga], hooks=())
    run = await worker.start(saga, "order-2", order(2))
    assert run.state == "running"  # the charge failed transiently; it waits for its backoff
    clock.advance(60)
    assert await worker.run_once() == 1
    run = await worker.execute("order-2")
    await worker.aclose()

    assert run.state == "completed"
    kinds = [(e.kind, e.step) for e in log.timeline("order-2")]
    assert ("failed", "charge") in kinds
    assert ("found", "charge") in kinds
    assert kinds.count(("started", "charge")) == 1  # looked up, never run again
    ledger = read_ledger(str(tmp_path / "partners.db"))
    assert len(ledger.charges["order-2"]) == 1
    assert ledger.refunds == {}
    assert len(ledger.shipments["order-2"]) == 1


async def test_a_lost_answer_is_retried_under_the_same_key_and_charged_once(
    serve: Serve, make_saga: Build, tmp_path: Path, clock: ManualClock
) -> None:
    # Each answer to order-1's charge is lost (502): the client's second attempt carries
    # the first one's key (no second charge), then the saga's lookup finds the charge.
    saga = make_saga(serve(Faults(lost=1.0, references=frozenset({"order-1"}))))
    log = SagaLog(f"sqlite:///{tmp_path / 'checkout.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [saga], hooks=())
    run = await worker.start(saga, "order-1", order(1))
    assert run.state == "running"
    clock.advance(60)
    await worker.run_once()
    run = await worker.execute("order-1")
    await worker.aclose()

    assert run.state == "completed"
    assert ("found", "charge") in [(e.kind, e.step) for e in log.timeline("order-1")]
    assert len(read_ledger(str(tmp_path / "partners.db")).charges["order-1"]) == 1
