"""Top offenders (``[top]``, ``/admin/top``, ``surefoot_top_requests``): counted per
worker, merged across workers and hosts through the store, exact while the clients fit in
``k``, windows by minute and hour, nothing lost to a store that fails for a while."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    EchoUpstream,
    gateway_config,
    problem,
    running,
    surefoot_serve,
    toml_config,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support import T0
from surefoot.errors import ConfigurationError
from surefoot.gateway import TopTracker
from surefoot.metrics import uncounted
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

POLICY = {"policies": [{"name": "reads", "limits": ["2/minute"]}]}
CLIENTS = [{"name": "acme", "api_key": "k-acme-0123456789"}]
ACME = {"authorization": "Bearer k-acme-0123456789"}


async def top(admin: httpx.AsyncClient, query: str) -> dict[str, Any]:
    response = await admin.get(f"/admin/top?{query}", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def counts(data: dict[str, Any]) -> dict[str | None, float]:
    return {item["client"] or item["principal"]: item["count"] for item in data["items"]}


async def test_refused_and_admitted_clients_are_listed_by_name(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    config = gateway_config(rate_limit=POLICY, clients=CLIENTS)
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        for _ in range(7):
            await gw.client.get("/a", headers=ACME)
        for _ in range(3):
            await gw.client.get("/a")
        assert gw.gateway.top is not None
        await gw.gateway.top.flush()
        refused = await top(gw.admin, "list=refused&policy=reads")
        assert counts(refused) == {"acme": 5, "addr:203.0.113.7": 1}
        assert refused["total"] == 6
        assert refused["error_bound"] == 6 / refused["k"]
        assert all(item["error"] == 0 for item in refused["items"])
        admitted = await top(gw.admin, "list=admitted&policy=reads&window=1h&limit=1")
        assert len(admitted["items"]) == 1
        assert admitted["items"][0]["count"] == 2


async def test_workers_sharing_a_store_are_merged_and_a_flush_counts_once(
    tmp_path: Path,
) -> None:
    """Two gateways on one SQLite file stand for two workers (or hosts): each writes its
    own slot, a read merges both, and writing the same counts again changes nothing."""
    clock = ManualClock(T0)
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    config = gateway_config(rate_limit=POLICY, clients=CLIENTS, stores={"default": store})
    async with (
        running(config, upstream=EchoUpstream(), clock=clock) as one,
        running(config, upstream=EchoUpstream(), clock=clock) as two,
    ):
        for _ in range(4):
            await one.client.get("/a", headers=ACME)
        for _ in range(6):
            await two.client.get("/a", headers=ACME)
        for gw in (one, two, one, two):
            assert gw.gateway.top is not None
            await gw.gateway.top.flush()
        # Both gateways counted the same limit in the shared store: 2 admitted in all.
        for gw in (one, two):
            assert counts(await top(gw.admin, "list=refused&policy=reads")) == {"acme": 8}
            assert counts(await top(gw.admin, "list=admitted&policy=reads")) == {"acme": 2}


async def test_windows_keep_minutes_and_hours() -> None:
    clock = ManualClock(T0 - T0 % 3600 + 1800)  # the middle of an hour
    config = gateway_config(rate_limit=POLICY, clients=CLIENTS)
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        for _ in range(3):
            tracker.count("refused", "reads", "addr:198.51.100.1")
        await tracker.flush()

        def window(name: str) -> Any:
            return top(gw.admin, f"list=refused&policy=reads&window={name}")

        # The hour's summary holds its current minute, merged in when written.
        assert counts(await window("6h")) == {"addr:198.51.100.1": 3}
        clock.advance(10 * 60)
        tracker.count("refused", "reads", "addr:198.51.100.2")
        await tracker.flush()
        assert counts(await window("5m")) == {"addr:198.51.100.2": 1}
        assert counts(await window("15m")) == {"addr:198.51.100.1": 3, "addr:198.51.100.2": 1}
        clock.advance(3600)  # the next hour: the last hour's boards still count for 6h
        assert counts(await window("1h")) == {}
        assert counts(await window("6h")) == {"addr:198.51.100.1": 3, "addr:198.51.100.2": 1}


async def test_a_failing_store_loses_nothing_a_worker_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(T0)
    config = gateway_config(rate_limit=POLICY, clients=CLIENTS)
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        for _ in range(5):
            await gw.client.get("/a", headers=ACME)
        board = tracker.board

        async def down(*args: Any) -> None:
            raise ConnectionError("store down")

        monkeypatch.setattr(tracker, "board", type("Down", (), {"board_put": down})())
        await tracker.flush()  # fails: the summaries stay to be written
        monkeypatch.setattr(tracker, "board", board)
        await tracker.flush()
        assert counts(await top(gw.admin, "list=refused&policy=reads")) == {"acme": 3}


async def test_test_traffic_is_not_counted() -> None:
    config = gateway_config(rate_limit=POLICY)
    async with running(config, upstream=EchoUpstream()) as gw:
        assert gw.gateway.top is not None
        with uncounted():
            gw.gateway.top(_rejected("addr:192.0.2.1"))
        gw.gateway.top(_rejected("addr:192.0.2.2"))
        await gw.gateway.top.flush()
        assert counts(await top(gw.admin, "list=refused&policy=reads")) == {"addr:192.0.2.2": 1}


def _rejected(principal: str) -> Any:
    from surefoot.ratelimit import RateLimitRejected

    return RateLimitRejected(
        at=T0,
        request_id="r",
        method="GET",
        path="/a",
        principal=principal,
        policy="reads",
        limit="2/minute",
        retry_after=1.0,
    )


async def test_reused_keys_and_unknown_outcomes_have_lists_of_their_own() -> None:
    config = gateway_config(rate_limit=POLICY)
    async with running(config, upstream=EchoUpstream()) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        tracker.count("reused", "", "cred:ab idem:0123:4567")
        tracker.count("unknown", "", "cred:ab")
        await tracker.flush()
        reused = await top(gw.admin, "list=reused")
        assert reused["items"] == [
            {
                "principal": "cred:ab",
                "client": None,
                "count": 1.0,
                "error": 0.0,
                "store_key": "idem:0123:4567",
            }
        ]
        assert counts(await top(gw.admin, "list=unknown&window=24h")) == {"cred:ab": 1}


async def test_the_prometheus_series_hold_at_most_exported_clients_per_list() -> None:
    config = gateway_config(rate_limit=POLICY, top={"exported": 2})
    async with running(config, upstream=EchoUpstream()) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        for n in range(50):
            for _ in range(n % 7 + 1):
                tracker.count("refused", "reads", f"addr:192.0.2.{n}")
        await tracker.flush()
        body = (await gw.admin.get("/metrics", headers=ADMIN_HEADERS)).text
        lines = [line for line in body.splitlines() if line.startswith("surefoot_top_requests{")]
        recent = [line for line in lines if 'window="5m"' in line]
        assert len(recent) == 2
        assert all('list="refused"' in line and line.endswith(" 7.0") for line in recent)
        assert all('client="addr:192.0.2.' in line for line in recent)  # no name: principal
        # Each client refused is also given over the day: the baseline of its spike rule.
        assert len([line for line in lines if 'window="24h"' in line]) == 2


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("list=biggest&policy=reads", "list: expected one of refused, admitted"),
        ("list=refused", "policy: expected one of reads"),
        ("list=refused&policy=writes", "policy: expected one of reads"),
        ("list=unknown&policy=reads", "not per policy"),
        ("list=refused&policy=reads&window=2d", "window: expected one of 1m"),
        ("list=refused&policy=reads&limit=0", "limit: expected a whole number"),
        ("list=refused&policy=reads&client=x", "unknown parameter"),
    ],
)
async def test_a_malformed_question_is_a_400_saying_what_is_expected(
    query: str, reason: str
) -> None:
    async with running(gateway_config(rate_limit=POLICY), upstream=EchoUpstream()) as gw:
        response = await gw.admin.get(f"/admin/top?{query}", headers=ADMIN_HEADERS)
        assert reason in problem(response, 400, "admin_bad_request")["detail"]


async def test_without_top_the_endpoint_is_not_found_and_nothing_is_counted() -> None:
    config = gateway_config(rate_limit=POLICY, top={"enabled": False})
    async with running(config, upstream=EchoUpstream()) as gw:
        assert gw.gateway.top is None
        assert not any(type(hook).__name__ == "TopTracker" for hook in gw.gateway.hooks)
        response = await gw.admin.get("/admin/top?list=refused&policy=reads", headers=ADMIN_HEADERS)
        problem(response, 404, "admin_not_found")


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"k": 5}, "top.k"),
        ({"exported": 101}, "top.exported"),
        ({"flush_every": 0}, "top.flush_every"),
        ({"store": "elsewhere"}, "top.store"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        gateway_config(top=table)


def test_two_serve_workers_merge_their_counts_through_sqlite(tmp_path: Path) -> None:
    """``surefoot serve`` with two worker processes: each counts the requests it served,
    and the admin API (whichever worker answers) lists the sum."""
    body = (
        '[top]\nflush_every = 1\n\n[[clients]]\nname = "acme"\napi_key = "k-acme-0123456789"\n\n'
        '[rate_limit]\n[[rate_limit.policies]]\nname = "reads"\nlimits = ["5/minute"]\n'
    )
    store = f"sqlite:///{tmp_path / 'gw.db'}"
    gateway = surefoot_serve(
        tmp_path, toml_config("http://127.0.0.1:9", store, body), "--workers", "2"
    )
    try:
        gateway.wait_ready()
        statuses = [
            httpx.get(gateway.url + "/a", headers=ACME, timeout=5).status_code for _ in range(40)
        ]
        refused = statuses.count(429)
        assert refused == 35  # 5 admitted (and answered 502: no upstream), then refused

        def merged() -> Any:
            data = gateway.admin_get("/admin/top?list=refused&policy=reads")
            return data if data["total"] == refused else None

        data = wait_until(merged, timeout=20, what="both workers' counts")
        assert [(i["client"], i["count"]) for i in data["items"]] == [("acme", 35.0)]
    finally:
        gateway.server.stop()


async def test_a_count_made_while_its_summary_is_written_is_written_next_time() -> None:
    clock = ManualClock(T0)
    async with running(
        gateway_config(rate_limit=POLICY), upstream=EchoUpstream(), clock=clock
    ) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        board = tracker.board

        class Racing:
            async def board_put(self, *args: Any) -> None:
                tracker.count("refused", "reads", "addr:192.0.2.9")  # during the write
                await board.board_put(*args)

        tracker.count("refused", "reads", "addr:192.0.2.9")
        tracker.board = Racing()  # type: ignore[assignment]
        await tracker.flush()
        tracker.board = board
        await tracker.flush()
        data = await top(gw.admin, "list=refused&policy=reads&window=1m")
        assert counts(data) == {"addr:192.0.2.9": 3}  # one per slot write, the last one kept


async def test_summaries_not_written_before_their_board_expired_are_dropped() -> None:
    clock = ManualClock(T0)
    async with running(
        gateway_config(rate_limit=POLICY), upstream=EchoUpstream(), clock=clock
    ) as gw:
        tracker = gw.gateway.top
        assert tracker is not None
        tracker.count("refused", "reads", "addr:192.0.2.9")
        clock.advance(3 * 3600)  # a store down for three hours: the minute board expired
        tracker.count("refused", "reads", "addr:192.0.2.10")
        await tracker.flush()
        assert counts(await top(gw.admin, "list=refused&policy=reads&window=1m")) == {
            "addr:192.0.2.10": 1
        }
        assert len(tracker._slots) == 2  # the current minute and hour


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["count", "flush", "advance"]),
            st.integers(min_value=0, max_value=5),  # a client, or minutes to advance
        ),
        max_size=60,
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_windows_hold_exactly_what_was_counted_whatever_the_order(
    steps: list[tuple[str, int]],
) -> None:
    """Counts, flushes and the clock moving by minutes in any order: once flushed, the
    last hour (by minute) and the last 6 hours (by hour) hold every count exactly once
    while the clients fit in k."""

    async def run() -> None:
        clock = ManualClock(T0 - T0 % 3600)
        tracker = TopTracker(MemoryStore(), k=100, clock=clock)
        counted: list[tuple[float, str]] = []
        for action, value in steps:
            if action == "count":
                tracker.count("refused", "p", f"c{value}")
                counted.append((clock.now(), f"c{value}"))
            elif action == "flush":
                await tracker.flush()
            else:
                clock.advance(60 * value)
        await tracker.flush()
        now = clock.now()
        for window, since in (("1h", (now // 60 - 59) * 60), ("6h", (now // 3600 - 5) * 3600)):
            exact: dict[str, float] = {}
            for at, item in counted:
                if at >= since:
                    exact[item] = exact.get(item, 0) + 1
            merged = await tracker.read("refused", "p", window)
            assert {c.item: c.count for c in merged.top()} == exact, window

    asyncio.run(run())


async def test_a_clock_stepping_back_counts_in_the_latest_minute_once() -> None:
    class WallClock:  # time.time() may step back (NTP); ManualClock may not
        at = T0 - T0 % 3600 + 1800

        def now(self) -> float:
            return self.at

    clock = WallClock()
    tracker = TopTracker(MemoryStore(), k=10, clock=clock)
    for step in (0, 61, -2, 120):  # the step back crosses a minute
        clock.at += step
        tracker.count("refused", "reads", "addr:192.0.2.1")
    await tracker.flush()
    for window in ("1h", "24h"):
        merged = await tracker.read("refused", "reads", window)
        assert [(c.item, c.count) for c in merged.top()] == [("addr:192.0.2.1", 4.0)]
