"""Retry storms: 100 clients against a failing-then-recovering server, in virtual time.

Usage::

    .venv/bin/python bench/client_storm.py                    # 5 seeds, the default scenario
    .venv/bin/python bench/client_storm.py --quick            # one seed: a smoke run
    .venv/bin/python bench/client_storm.py --requests-per-client 20 --think 1 --outage 20
    .venv/bin/python bench/client_storm.py --json storm.json

A simulation after AWS's "Exponential Backoff and Jitter" (Marc Brooker, 2015): many
clients hit one server at the same instant, fail, and retry; what matters is how many
calls the server receives in all and how long it takes until every client is done. It is
in-process and deterministic: no network, no real sleeping, fixed seeds.

The model:
1. Virtual time: one ``ManualClock`` (from 0.0) shared by everyone. Each client is an
   asyncio task; its only way to wait is ``VirtualTime.sleep``, which files a wake-up
   time in a heap and blocks. When every task is blocked (or done), the scheduler moves
   the clock to the earliest wake-up and releases every task due at that instant, in the
   order they went to sleep. Calls at one virtual instant are therefore simultaneous, and
   nothing takes virtual time except sleeping: a call is instantaneous.
2. The server (``Upstream``), an ``httpx.MockTransport`` handler reading the shared clock:
   during the outage, ``[0, --outage)``, every call gets a 503; after it, the server takes
   at most ``--capacity`` calls per ``--slot`` seconds (a time step) and answers 200, and
   any call beyond that in the same step gets a 503 (overload); ``--capacity 0``: no limit.
   503 carries no ``Retry-After``, so only the client's backoff spaces the retries.
3. ``--clients`` clients (100), each an ``httpx.AsyncClient`` over its own
   ``AsyncResilientTransport`` (the clock above, ``VirtualTime.sleep``, a
   ``random.Random`` seeded from the seed and the client's number, no hooks but a counter
   of why requests were given up). Each sends ``--requests-per-client`` logical GETs (1:
   everyone at t=0, the AWS set-up), ``--think`` seconds apart; a GET is done when it
   returns (200, or the last 503 when the flow gives up) or raises (deadline).
4. The policy is the same for every configuration except its jitter:
   ``RetryPolicy(max_attempts=10, backoff_base=0.1, backoff_max=10, deadline=120)``, so
   that retries, not the deadline, decide the outcome. The budget is either off
   (``RetryBudget.unlimited()``), one default ``RetryBudget()`` shared by all clients (as
   one process's callers of one partner would share it), or the transport's default: a
   ``RetryBudget()`` per client.
5. Measured per configuration and seed: calls the server received (all attempts), logical
   requests that got a 200, the virtual time at which the last client finished
   ("drain"), the calls during the outage and those refused for overload, and the
   busiest time step. The table shows medians over seeds (``none`` jitter is the same
   for every seed).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import _harness as h
import httpx

from surefoot.client import (
    AsyncResilientTransport,
    RetriesExhausted,
    RetryBudget,
    RetryPolicy,
)
from surefoot.errors import UpstreamError
from surefoot.events import Event
from surefoot.testing import ManualClock

Jitter = Literal["full", "equal", "decorrelated", "none"]


@dataclass(frozen=True)
class Config:
    name: str
    jitter: Jitter
    budget: str  # "off", "shared" or "own"
    meaning: str


CONFIGS = (
    Config("none", "none", "off", 'jitter="none", no budget: every client retries in step'),
    Config("full", "full", "off", 'jitter="full" (the default), no budget'),
    Config("full+budget", "full", "shared", "full jitter, one RetryBudget() shared by all"),
    Config(
        "full+own-budget", "full", "own", "full jitter, a RetryBudget() per client (the default)"
    ),
    Config("none+budget", "none", "shared", "no jitter, one RetryBudget() shared by all"),
    Config("equal", "equal", "off", 'jitter="equal", no budget'),
    Config("decorrelated", "decorrelated", "off", 'jitter="decorrelated", no budget'),
)


class VirtualTime:
    """A shared virtual clock and a scheduler that advances it when every task waits."""

    def __init__(self) -> None:
        self.clock = ManualClock(0.0)
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._running = 0  # tasks neither waiting in sleep() nor finished
        self._idle = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wake = self.clock.now() + max(0.0, seconds)
        heapq.heappush(self._heap, (wake, next(self._order), future))
        self._blocked()
        await future

    def _blocked(self) -> None:
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def task() -> None:
            try:
                await coroutine
            finally:
                self._blocked()

        self._running += 1
        return asyncio.create_task(task())

    async def run(self) -> None:
        """Advance time until every task has finished."""
        while True:
            await self._idle.wait()
            self._idle.clear()
            if not self._heap:
                return
            now = self._heap[0][0]
            self.clock.set(now)
            while self._heap and self._heap[0][0] == now:
                _, _, future = heapq.heappop(self._heap)
                self._running += 1
                future.set_result(None)


class Upstream:
    """The server: down during the outage, then at most ``capacity`` calls per time step."""

    def __init__(self, clock: ManualClock, outage: float, capacity: int, slot: float) -> None:
        self.clock = clock
        self.outage = outage
        self.capacity = capacity
        self.slot = slot
        self.per_slot: Counter[int] = Counter()
        self.calls = 0
        self.outage_calls = 0
        self.overloaded = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.now()
        self.calls += 1
        step = math.floor(now / self.slot)
        self.per_slot[step] += 1
        if now < self.outage:
            self.outage_calls += 1
            return httpx.Response(503)
        if self.capacity and self.per_slot[step] > self.capacity:
            self.overloaded += 1
            return httpx.Response(503)
        return httpx.Response(200)


class GaveUp:
    """A hook that counts why the flow gave up (``RetriesExhausted.stopped``)."""

    def __init__(self) -> None:
        self.stopped: Counter[str] = Counter()

    def wants(self, event_type: type[Event]) -> bool:
        return event_type is RetriesExhausted

    def __call__(self, event: Event) -> None:
        assert isinstance(event, RetriesExhausted)
        self.stopped[event.stopped] += 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, quick={"seeds": 1})
    h.option(parser, "--clients", 100, "clients")
    h.option(parser, "--requests-per-client", 1, "logical GETs per client, one after another")
    h.option(parser, "--think", 1.0, "virtual seconds between a client's GETs")
    h.option(parser, "--outage", 5.0, "seconds every call fails")
    h.option(parser, "--capacity", 20, "calls served per time step after the outage, 0: no limit")
    h.option(parser, "--slot", 0.1, "seconds of a time step")
    h.option(parser, "--seeds", 5, "seeds 0..N-1")
    h.add_selection(parser, "--configs", CONFIGS)
    h.add_output_options(parser, check=False)
    args = h.parse(parser, argv)
    if min(args.clients, args.requests_per_client, args.seeds) < 1:
        parser.error("expected --clients, --requests-per-client and --seeds >= 1")
    if args.slot <= 0 or args.outage < 0 or args.capacity < 0 or args.think < 0:
        parser.error("expected --slot > 0 and --outage, --capacity, --think >= 0")
    return args


def policy(jitter: Jitter) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=10, backoff_base=0.1, backoff_max=10.0, deadline=120.0, jitter=jitter
    )


async def simulate(args: argparse.Namespace, config: Config, seed: int) -> dict[str, Any]:
    time = VirtualTime()
    upstream = Upstream(time.clock, args.outage, args.capacity, args.slot)
    gave_up = GaveUp()
    shared = RetryBudget() if config.budget == "shared" else None
    retry = policy(config.jitter)
    finished: list[float] = []  # when each client finished its last GET
    ok = 0
    raised = 0

    async def client(number: int) -> None:
        nonlocal ok, raised
        if config.budget == "off":
            budget = RetryBudget.unlimited()
        else:
            budget = shared if shared is not None else RetryBudget()
        transport = AsyncResilientTransport(
            httpx.MockTransport(upstream.handle),
            retry=retry,
            budget=budget,
            clock=time.clock,
            sleep=time.sleep,
            hooks=[gave_up],
            random=random.Random(seed * 1_000_003 + number),
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as c:
            for index in range(args.requests_per_client):
                if index:
                    await time.sleep(args.think)
                try:
                    response = await c.get("/work")
                except UpstreamError:
                    raised += 1
                else:
                    ok += response.status_code == 200
        finished.append(time.clock.now())

    for number in range(args.clients):
        time.spawn(client(number))
    await time.run()
    requests = args.clients * args.requests_per_client
    assert len(finished) == args.clients
    return {
        "config": config.name,
        "seed": seed,
        "requests": requests,
        "calls": upstream.calls,
        "calls_per_request": upstream.calls / requests,
        "succeeded": ok,
        "failed": requests - ok,
        "raised": raised,
        "drain_s": max(finished),
        "median_done_s": statistics.median(finished),
        "outage_calls": upstream.outage_calls,
        "overloaded": upstream.overloaded,
        "peak_per_slot": max(upstream.per_slot.values()),
        "stopped": dict(gave_up.stopped),
    }


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for config in args.configs:
        mine = [r for r in runs if r["config"] == config.name]
        calls = h.Spread.range([r["calls"] for r in mine])
        drain = h.Spread.range([r["drain_s"] for r in mine])
        stopped: Counter[str] = Counter()
        for r in mine:
            stopped.update(r["stopped"])
        rows.append(
            {
                "config": config.name,
                "meaning": config.meaning,
                "calls": calls.median,
                "calls_min": calls.low,
                "calls_max": calls.high,
                "succeeded": h.median(r["succeeded"] for r in mine),
                "drain_s": drain.median,
                "drain_min": drain.low,
                "drain_max": drain.high,
                **{
                    key: h.median(r[key] for r in mine)
                    for key in (
                        "calls_per_request",
                        "median_done_s",
                        "outage_calls",
                        "overloaded",
                        "peak_per_slot",
                    )
                },
                "stopped_total": dict(stopped),
            }
        )
    return rows


COLUMNS = (
    h.Column("configuration", "<16"), h.Column("calls", ">6"), h.Column("(min-max)", ">11"),
    h.Column("calls/req", ">9"), h.Column("ok", ">5"), h.Column("drain s", ">7"),
    h.Column("(min-max)", ">11"), h.Column("p50 done", ">8"), h.Column("in outage", ">9"),
    h.Column("overload", ">8"), h.Column("peak/step", ">9"),
    h.Column("given up (all seeds)", gap=2),
)  # fmt: skip


def print_report(args: argparse.Namespace, command: str, rows: list[dict[str, Any]]) -> None:
    p = policy("full")
    capacity = (
        f"{args.capacity} calls per {args.slot:g} s step" if args.capacity else "no capacity limit"
    )
    print(f"command:  {command}")
    print(
        f"model:    {args.clients} clients x {args.requests_per_client} GET "
        f"({args.think:g} s apart) from t=0; every call fails (503) for {args.outage:g} s, "
        f"then {capacity} (503 beyond)"
    )
    print(
        f"policy:   RetryPolicy(max_attempts={p.max_attempts}, backoff_base={p.backoff_base}, "
        f"backoff_max={p.backoff_max}, deadline={p.deadline}, jitter=...); "
        f"seeds 0-{args.seeds - 1}, medians over seeds"
    )
    print()
    cells = [
        [
            row["config"],
            f"{row['calls']:.0f}",
            f"{row['calls_min']}-{row['calls_max']}",
            f"{row['calls_per_request']:.2f}",
            f"{row['succeeded']:.0f}",
            f"{row['drain_s']:.1f}",
            f"{row['drain_min']:.1f}-{row['drain_max']:.1f}",
            f"{row['median_done_s']:.1f}",
            f"{row['outage_calls']:.0f}",
            f"{row['overloaded']:.0f}",
            f"{row['peak_per_slot']:.0f}",
            ", ".join(f"{k} {v}" for k, v in sorted(row["stopped_total"].items())) or "-",
        ]
        for row in rows
    ]
    print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("calls: calls the server received (every attempt); calls/req: over logical GETs;")
    print("ok: GETs that got a 200; drain: virtual time when the last client finished;")
    print("p50 done: the median client's finishing time; in outage: calls during the outage;")
    print("overload: calls refused beyond the capacity; peak/step: most calls in one step;")
    print("given up: why the flow stopped retrying (RetriesExhausted.stopped), summed.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    for seed in range(args.seeds):
        for config in args.configs:
            runs.append(asyncio.run(simulate(args, config, seed)))
    rows = summarize(args, runs)
    print_report(args, args.command, rows)
    settings = h.settings(
        args, "clients", "requests_per_client", "think", "outage", "capacity", "slot", "seeds"
    )
    context = {"command": args.command}
    return h.finish(args, context, settings, rows, runs, policy=repr(policy("full")))


if __name__ == "__main__":
    sys.exit(h.run(main))
