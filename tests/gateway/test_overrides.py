"""Temporary rate-limit overrides: the pure rules (``gateway/_overrides.py``), the gateway
applying them without a rebuild and reverting them at their expiry, the admin API, the CLI,
two gateways sharing one SQLite store as two workers do, and races and store failures
(another operator's call run in the middle of a store call)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    EchoUpstream,
    gateway_config,
    problem,
    running,
)
from click.testing import CliRunner

from _support import T0, of
from surefoot.cli import main
from surefoot.errors import StoreUnavailable
from surefoot.gateway import (
    OverrideAdded,
    OverrideExpired,
    OverrideRemoved,
    SharedOverrides,
    TemporaryOverride,
    apply_overrides,
    load_config,
)
from surefoot.gateway._override_board import AUDIT, BOARD, EVENTS
from surefoot.identity import hash_credential
from surefoot.ratelimit import Limit, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

ACME_KEY, GLOBEX_KEY = "k-acme-0123456789", "k-globex-0123456789"
ACME_P, GLOBEX_P = hash_credential(ACME_KEY.encode()), hash_credential(GLOBEX_KEY.encode())
CLIENTS = [
    {"name": "acme", "api_key": ACME_KEY, "tier": "pro"},
    {"name": "globex", "api_key": GLOBEX_KEY},
]
ACME = {"authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"authorization": f"Bearer {GLOBEX_KEY}"}
READS = {"name": "reads", "limits": ["2/hour"], "tiers": {"pro": ["3/hour"]}}
WHO = {"reason": "spring campaign", "by": "alice"}


# -- the pure rules ------------------------------------------------------------------------


def made(
    policy: str = "reads",
    client: str | None = "acme",
    limits: Sequence[str] = ("100/hour",),
    *,
    at: float = T0,
    until: float = T0 + 600,
    n: int = 1,
) -> TemporaryOverride:
    return TemporaryOverride(
        id=f"{n:032x}",
        policy=policy,
        client=client,
        limits=tuple(limits),
        starts_at=at,
        expires_at=until,
        by="alice",
        reason="campaign",
    )


PRINCIPALS = {"acme": ["p-acme-1", "p-acme-2"], "globex": ["p-globex"], "initech": []}


def file_policies() -> list[RateLimitPolicy]:
    return [
        RateLimitPolicy(
            "reads",
            limits=["10/hour"],
            tiers={"pro": ["20/hour"]},
            overrides={"p-globex": ["5/hour"]},
        ),
        RateLimitPolicy("quota", limits=["100/day"], algorithm="quota"),
    ]


def amounts(policy: RateLimitPolicy, principal: str, tier: str | None = None) -> list[int]:
    return [limit.amount for limit in policy.limits_for(principal, tier)]


@pytest.mark.parametrize(
    ("overrides", "now", "expected"),
    [
        # (principal, tier) -> amounts of "reads", for: acme, acme as pro, globex, someone.
        ([], T0, [[10], [20], [5], [10]]),
        # A client override sets each of its principals' limits, whatever its tier.
        ([made()], T0, [[100], [100], [5], [10]]),
        # Rule 1: never at or past expires_at.
        ([made()], T0 + 600, [[10], [20], [5], [10]]),
        # Policy-wide: the limits and every tier's; the file's client override stays.
        ([made(client=None, limits=["50/hour", "5/second"])], T0, [[50, 5], [50, 5], [5], [50, 5]]),
        # A client's own override wins over a policy-wide one (Rule 3).
        ([made(client=None, limits=["50/hour"], n=2), made()], T0, [[100], [100], [5], [50]]),
        # A temporary client override takes the file's override's place while it lasts.
        ([made(client="globex", limits=["7/hour"])], T0, [[10], [20], [7], [10]]),
        # Rule 4: of two for one target, the later created wins, in any order.
        (
            [made(limits=["300/hour"], at=T0 + 1, n=2), made(limits=["200/hour"], n=1)],
            T0 + 2,
            [[300], [300], [5], [10]],
        ),
        # Rule 5: what the configuration does not have is left out, never half-applied.
        ([made(policy="gone"), made(client="unknown")], T0, [[10], [20], [5], [10]]),
        ([made(client="initech")], T0, [[10], [20], [5], [10]]),
    ],
)
def test_apply_overrides_follows_the_rules(
    overrides: list[TemporaryOverride], now: float, expected: list[list[int]]
) -> None:
    policies = file_policies()
    before = [(p.limits, dict(p.tiers), dict(p.overrides)) for p in policies]
    reads, quota = apply_overrides(policies, overrides, PRINCIPALS, now=now)
    seen = [
        amounts(reads, "p-acme-1"),
        amounts(reads, "p-acme-2", "pro"),
        amounts(reads, "p-globex"),
        amounts(reads, "someone"),
    ]
    assert seen == expected
    assert quota == policies[1]  # untouched
    # Rule 2: the file's policies are never changed.
    assert [(p.limits, dict(p.tiers), dict(p.overrides)) for p in policies] == before


def test_limits_a_policy_refuses_are_left_out_and_the_others_applied() -> None:
    minute = made(policy="quota", client=None, limits=["10/minute"])  # a quota is per day
    day = made(policy="quota", client="acme", limits=["500/day"], n=2)
    _, quota = apply_overrides(file_policies(), [minute, day], PRINCIPALS, now=T0)
    assert quota.limits == (Limit(100, 86400, algorithm="quota", period="day"),)
    assert amounts(quota, "p-acme-1") == [500]


def test_an_override_round_trips_and_bad_bytes_are_refused() -> None:
    override = made(client=None, limits=["1000/minute", "20/second"])
    assert TemporaryOverride.decode(override.encode()) == override
    assert override.target == "reads *"
    assert made().target == "reads acme"
    data = json.loads(override.encode())
    for bad, error in (
        (b"not json", "expected JSON"),
        (b"[]", "expected an object"),
        (json.dumps({**data, "extra": 1}).encode(), "expected an object"),
        (json.dumps({**data, "id": "short"}).encode(), "id:"),
        (json.dumps({**data, "limits": "1/second"}).encode(), "limits:"),
        (json.dumps({**data, "limits": [f"{n}/second" for n in range(1, 10)]}).encode(), "limits:"),
        (json.dumps({**data, "expires_at": data["starts_at"]}).encode(), "expires_at:"),
        (json.dumps({**data, "by": ""}).encode(), "by:"),
        (json.dumps({**data, "reason": "x" * 201}).encode(), "reason:"),
        (json.dumps({**data, "reason": "x" * 9000}).encode(), "at most 8192 bytes"),
        (json.dumps({**data, "policy": ""}).encode(), "policy:"),
        (json.dumps({**data, "client": ""}).encode(), "client:"),
        (json.dumps({**data, "limits": [1]}).encode(), "limits:"),
        (json.dumps({**data, "starts_at": "now"}).encode(), "starts_at:"),
        (json.dumps({**data, "expires_at": float("inf")}).encode(), "expires_at:"),
    ):
        with pytest.raises(ValueError, match=error):
            TemporaryOverride.decode(bad)


# -- in the gateway --------------------------------------------------------------------------


async def statuses(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[int]:
    return [(await client.get("/orders", headers=headers)).status_code for _ in range(n)]


async def post(admin: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await admin.post(path, headers=ADMIN_HEADERS, json=body)


async def listed(admin: httpx.AsyncClient, query: str = "") -> dict[str, Any]:
    response = await admin.get(f"/admin/overrides{query}", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def config(**rate_limit: Any) -> Any:
    return gateway_config(
        rate_limit={"policies": [READS], **rate_limit},
        clients=CLIENTS,
    )


async def test_an_override_lets_a_client_through_and_reverts_by_itself_at_its_expiry() -> None:
    clock, events = ManualClock(T0), []
    async with running(config(), upstream=EchoUpstream(), clock=clock, hooks=[events.append]) as r:
        assert await statuses(r.client, ACME, 4) == [200, 200, 200, 429]  # pro: 3/hour
        body = {"policy": "reads", "client": "acme", "limits": ["100/hour"], "for": "2m", **WHO}
        added = await post(r.admin, "/admin/overrides", body)
        assert added.status_code == 201, added.text
        # In force at once on this worker, without a rebuild: the same stack serves.
        stack = r.gateway.stack
        assert await statuses(r.client, ACME, 3) == [200, 200, 200]
        assert await statuses(r.client, GLOBEX, 3) == [200, 200, 429]  # others unchanged
        [shown] = (await listed(r.admin))["overrides"]
        assert shown == {
            "id": added.json()["added"]["id"],
            "policy": "reads",
            "client": "acme",
            "limits": ["100/hour"],
            "starts_at": T0,
            "expires_at": T0 + 120,
            "remaining": 120.0,
            "by": "alice",
            "reason": "spring campaign",
        }
        usage = await r.admin.get("/admin/limits?client=acme", headers=ADMIN_HEADERS)
        [acme] = usage.json()["principals"]
        assert [(u["limit"], u["remaining"]) for u in acme["limits"]] == [
            ("100 requests per hour", 94)
        ]
        clock.advance(120)  # the expiry instant: no sync, no admin action
        assert await statuses(r.client, ACME, 1) == [429]
        assert r.gateway.stack is stack
        assert (await listed(r.admin))["overrides"] == []
        await r.gateway.sync_overrides()  # the audit of the expiry waits for a sync
        audit = (await listed(r.admin, "?audit=1"))["audit"]
    assert [(a["change"], a["by"], a["reason"]) for a in audit] == [
        ("added", "alice", "spring campaign"),
        ("expired", "alice", "spring campaign"),
    ]
    assert audit[1]["at"] == T0 + 120
    assert audit[1]["override"]["limits"] == ["100/hour"]
    [add] = of(events, OverrideAdded)
    [expired] = of(events, OverrideExpired)
    assert (add.policy, add.client, add.limits, add.by, add.reason) == (
        "reads",
        "acme",
        ("100/hour",),
        "alice",
        "spring campaign",
    )
    assert (expired.override_id, expired.expires_at) == (add.override_id, T0 + 120)
    assert add.name == "ratelimit.override_added"


async def test_a_policy_wide_override_relaxes_every_client_and_tier_until_removed() -> None:
    clock, events = ManualClock(T0), []
    policy = {**READS, "name": "checkout"}
    options = {"upstream": EchoUpstream(), "clock": clock, "hooks": [events.append]}
    async with running(config(policies=[policy]), **options) as r:
        assert await statuses(r.client, ACME, 4) == [200, 200, 200, 429]  # pro: 3/hour
        assert await statuses(r.client, GLOBEX, 3) == [200, 200, 429]
        body = {"policy": "checkout", "limits": ["50/hour"], "until": T0 + 3600, **WHO}
        assert (await post(r.admin, "/admin/overrides", body)).status_code == 201
        assert await statuses(r.client, ACME, 2) == [200, 200]
        assert await statuses(r.client, GLOBEX, 2) == [200, 200]
        [shown] = (await listed(r.admin))["overrides"]
        assert (shown["client"], shown["remaining"]) == (None, 3600.0)
        clock.advance(10)
        gone = {"policy": "checkout", "reason": "incident over", "by": "bob"}
        removed = await post(r.admin, "/admin/overrides/remove", gone)
        assert removed.status_code == 200, removed.text
        assert await statuses(r.client, ACME, 1) == [429]
        assert await statuses(r.client, GLOBEX, 1) == [429]
        again = await post(r.admin, "/admin/overrides/remove", gone)
        problem(again, 404, "admin_not_found")
        await r.gateway.sync_overrides()
        audit = (await listed(r.admin, "?audit=1"))["audit"]
    assert [(a["change"], a["by"], a["reason"]) for a in audit] == [
        ("added", "alice", "spring campaign"),
        ("removed", "bob", "incident over"),
    ]
    [removed_event] = of(events, OverrideRemoved)
    assert (removed_event.by, removed_event.client, removed_event.at) == ("bob", None, T0 + 10)
    assert of(events, OverrideExpired) == []


async def test_a_new_override_of_a_target_replaces_the_old_one_in_the_audit_too() -> None:
    clock = ManualClock(T0)
    async with running(config(), upstream=EchoUpstream(), clock=clock) as r:
        body = {"policy": "reads", "client": "acme", "limits": ["10/hour"], "for": "1h", **WHO}
        first = (await post(r.admin, "/admin/overrides", body)).json()["added"]
        clock.advance(1)
        second = await post(r.admin, "/admin/overrides", {**body, "limits": ["4/hour"]})
        assert second.json()["replaced"]["id"] == first["id"]
        assert await statuses(r.client, ACME, 5) == [200] * 4 + [429]
        [shown] = (await listed(r.admin))["overrides"]
        assert shown["limits"] == ["4/hour"]
        audit = (await listed(r.admin, "?audit=1"))["audit"]
    assert [a["change"] for a in audit] == ["added", "removed", "added"]
    assert audit[1]["reason"] == f"replaced by {second.json()['added']['id']}"


async def test_a_reload_keeps_the_overrides_in_force() -> None:
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        body = {"policy": "reads", "client": "acme", "limits": ["100/hour"], "for": "1h", **WHO}
        assert (await post(r.admin, "/admin/overrides", body)).status_code == 201
        assert await r.gateway.reload(config(legacy_headers=True))
        assert await statuses(r.client, ACME, 3) == [200, 200, 200]
        assert await statuses(r.client, GLOBEX, 3) == [200, 200, 429]


GOOD = {"policy": "reads", "client": "acme", "limits": ["100/hour"], "for": "1h", **WHO}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"policy": "nope"}, "policy:"),
        ({"policy": ""}, "policy:"),
        ({"client": "unknown"}, "client:"),
        ({"client": 7}, "client:"),
        ({"limits": ["lots"]}, "limits:"),
        ({"limits": "100/hour"}, "limits:"),
        ({"limits": []}, "limits:"),
        ({"limits": ["0/hour"]}, "limits:"),
        ({"for": "31d"}, "for: expected at most [rate_limit] max_override"),
        ({"for": "soon"}, "for:"),
        ({"for": None, "until": T0 + 40 * 86400}, "until: expected at most"),
        ({"for": None, "until": T0 - 1}, "until:"),
        ({"for": None, "until": "tomorrow"}, "until: expected unix seconds"),
        ({"until": T0 + 60}, "for: expected one of"),
        ({"for": None}, "for: expected one of"),
        ({"reason": None}, "reason: required"),
        ({"reason": "x" * 201}, "reason:"),
        ({"by": None}, "by: required"),
        ({"by": "\n"}, "by:"),
        ({"extra": 1}, "unknown fields"),
    ],
)
async def test_a_bad_override_is_refused_naming_its_field(
    change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        refused = await post(r.admin, "/admin/overrides", body)
        detail = problem(refused, 400, "admin_bad_request")["detail"]
        assert field in detail
        assert (await listed(r.admin, "?audit=1")) == {"overrides": [], "audit": []}


async def test_removing_needs_who_and_why() -> None:
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        assert (await post(r.admin, "/admin/overrides", GOOD)).status_code == 201
        for body, field in (
            ({"policy": "reads", "client": "acme", "by": "bob"}, "reason: required"),
            ({"policy": "reads", "client": "acme", "reason": "done"}, "by: required"),
            ({"client": "acme", "reason": "done", "by": "bob"}, "policy:"),
        ):
            refused = await post(r.admin, "/admin/overrides/remove", body)
            assert field in problem(refused, 400, "admin_bad_request")["detail"]
        assert len((await listed(r.admin))["overrides"]) == 1


async def test_at_most_max_live_overrides_are_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("surefoot.gateway._override_board.MAX_LIVE", 1)
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        assert (await post(r.admin, "/admin/overrides", GOOD)).status_code == 201
        again = await post(r.admin, "/admin/overrides", {**GOOD, "limits": ["9/hour"]})
        assert again.status_code == 201  # replacing one is no new one
        other = await post(r.admin, "/admin/overrides", {**GOOD, "client": "globex"})
        assert "at most 1 overrides" in problem(other, 400, "admin_bad_request")["detail"]


async def test_an_expiry_no_worker_saw_is_audited_once_by_the_next_to_start() -> None:
    store, clock, events = MemoryStore(), ManualClock(T0), []
    maker = SharedOverrides(store, clock=clock)
    await maker.add(made(until=T0 + 60))
    clock.advance(3600)  # every worker was down meanwhile: the store dropped the slot
    assert await store.board_read(BOARD, clock.now()) == {}
    late = [SharedOverrides(store, clock=clock, hooks=[events.append]) for _ in range(2)]
    for worker in late:
        assert await worker.sync() is False
    [expired] = of(events, OverrideExpired)
    assert expired.at == T0 + 60
    assert sorted(await store.board_read(AUDIT, clock.now())) == [
        f"added {made().id}",
        f"ended {made().id}",
    ]


class Flaky(MemoryStore):
    """A memory store whose next ``board_claim`` fails (the store went down meanwhile)."""

    fail = False

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        if self.fail:
            self.fail = False
            raise StoreUnavailable(retry_after=1)
        return await super().board_claim(board, slot, value, expires_at, now)


async def test_a_worker_audits_an_expiry_between_its_syncs_even_after_a_failed_try() -> None:
    store, clock, events = Flaky(), ManualClock(T0), []
    await SharedOverrides(store, clock=clock).add(made(until=T0 + 60))
    await store.board_put(BOARD, "reads junk", b"not an override", T0 + 60, T0)
    for junk in ("junk", "added junk"):
        await store.board_put(AUDIT, junk, b"not json", T0 + 3600, T0)
    worker = SharedOverrides(store, clock=clock, hooks=[events.append])
    assert await worker.sync() is True
    assert list(worker.live) == ["reads acme"]  # the junk is skipped
    assert worker.expire(T0 + 59) is False
    clock.advance(61)  # no request came: the next sync sees it gone
    store.fail = True
    assert await worker.sync() is True  # what is in force is decided all the same
    assert worker.live == {}
    assert of(events, OverrideExpired) == []
    assert await worker.sync() is False  # the audit is made at the next sync
    [expired] = of(events, OverrideExpired)
    assert expired.at == T0 + 60
    assert [a["change"] for a in await worker.audit(clock.now())] == ["added", "expired"]


# -- workers: the CLI, two gateways on one store -----------------------------------------------


def toml(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[upstream]\nurl = "http://upstream.test"\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
        f'[stores]\ndefault = "sqlite:///{tmp_path / "gw.db"}"\n'
        '[[rate_limit.policies]]\nname = "reads"\nlimits = ["2/hour"]\n'
        f'[[clients]]\nname = "acme"\napi_key = "{ACME_KEY}"\n'
        f'[[clients]]\nname = "globex"\napi_key = "{GLOBEX_KEY}"\n'
    )
    return path


async def test_the_cli_adds_an_override_the_running_gateway_picks_up_at_its_sync(
    tmp_path: Path,
) -> None:
    path, runner = toml(tmp_path), CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(
            runner.invoke, main, ["overrides", *args, "--config", str(path)]
        )

    # The CLI writes with the wall clock: the gateway's starts there too (never advanced).
    clock, events = ManualClock(time.time()), []
    options = {"upstream": EchoUpstream(), "clock": clock, "hooks": [events.append]}
    async with running(load_config(str(path)), **options) as r:
        await r.gateway.sync_overrides()  # the store's database exists from here on
        assert await statuses(r.client, ACME, 3) == [200, 200, 429]
        added = await cli(
            "add", "--policy", "reads", "--client", "acme", "--limit", "100/hour",
            "--for", "2h", "--reason", "campaign", "--by", "carol",
        )  # fmt: skip
        assert added.exit_code == 0, added.output
        assert "reads acme: 100/hour until" in added.output
        assert await statuses(r.client, ACME, 1) == [429]  # not before its sync
        await r.gateway.sync_overrides()
        assert await statuses(r.client, ACME, 2) == [200, 200]
        [shown] = json.loads((await cli("list", "--json")).output)
        assert (shown["client"], shown["limits"], shown["by"]) == ("acme", ["100/hour"], "carol")
        table = await cli("list")
        assert "carol" in table.output
        assert "campaign" in table.output
        bad = await cli("add", "--policy", "reads", "--limit", "lots", "--for", "1h",
                        "--reason", "x")  # fmt: skip
        assert bad.exit_code == 2
        assert "limits:" in bad.output
        long = await cli("add", "--policy", "reads", "--limit", "9/hour", "--for", "60d",
                         "--reason", "x")  # fmt: skip
        assert long.exit_code == 2
        assert "max_override" in long.output
        removed = await cli("remove", "--policy", "reads", "--client", "acme",
                            "--reason", "over", "--by", "dave")  # fmt: skip
        assert removed.exit_code == 0, removed.output
        assert (await cli("remove", "--policy", "reads", "--client", "acme",
                          "--reason", "over")).exit_code == 1  # fmt: skip
        await r.gateway.sync_overrides()
        assert await statuses(r.client, ACME, 1) == [429]
        audit = json.loads((await cli("list", "--audit", "--json")).output)
        assert [(a["change"], a["by"]) for a in audit] == [("added", "carol"), ("removed", "dave")]
        assert "no overrides in force" in (await cli("list")).output
    # The CLI emits no events: the gateway's sync does, for what it saw change.
    [add] = of(events, OverrideAdded)
    [removed] = of(events, OverrideRemoved)
    assert (add.by, removed.by, removed.reason) == ("carol", "dave", "over")


async def test_two_workers_on_one_store_both_apply_an_override_and_audit_its_expiry_once(
    tmp_path: Path,
) -> None:
    clock, events = ManualClock(T0), []
    path = toml(tmp_path)
    one = running(
        load_config(str(path)), upstream=EchoUpstream(), clock=clock, hooks=[events.append]
    )
    two = running(
        load_config(str(path)), upstream=EchoUpstream(), clock=clock, hooks=[events.append]
    )
    async with one as a, two as b:
        # One store: the counters are shared, as they are between workers.
        assert await statuses(a.client, ACME, 2) == [200, 200]
        assert await statuses(b.client, ACME, 1) == [429]
        body = {**GOOD, "for": "5m"}
        assert (await post(a.admin, "/admin/overrides", body)).status_code == 201
        assert await statuses(a.client, ACME, 1) == [200]
        assert await statuses(b.client, ACME, 1) == [429]  # until its next sync
        await b.gateway.sync_overrides()
        assert await statuses(b.client, ACME, 1) == [200]
        assert (await listed(b.admin))["overrides"][0]["by"] == "alice"
        clock.advance(300)
        assert await statuses(a.client, ACME, 1) == [429]
        assert await statuses(b.client, ACME, 1) == [429]
        for gateway in (a.gateway, b.gateway, a.gateway, b.gateway):
            await gateway.sync_overrides()
    assert len(of(events, OverrideAdded)) == 1
    assert len(of(events, OverrideExpired)) == 1


# -- races and failures: one operator's call run in the middle of another's store call -------


class Interleaved(MemoryStore):
    """A memory store that runs ``then`` once, right after its next call of ``method`` on
    ``board`` returned (as another operator's call, made while this one waits on the store)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, str, Any]] = []

    def after(self, method: str, board: str, then: Any) -> None:
        self.pending.append((method, board, then))

    async def _then(self, method: str, board: str) -> None:
        for step in self.pending:
            if step[:2] == (method, board):
                self.pending.remove(step)
                await step[2]()
                return

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        found = await super().board_read(board, now)
        await self._then("read", board)
        return found

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        await super().board_put(board, slot, value, expires_at, now)
        await self._then("put", board)


def changes(rows: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """(change, the override's number as ``made`` numbers them, reason) of each audit row."""
    return [(r["change"], int(r["override"]["id"], 16), r["reason"]) for r in rows]


def seen(events: list[Any]) -> list[tuple[str, int]]:
    return [(type(e).__name__, int(e.override_id, 16)) for e in events]


async def test_a_remove_never_deletes_the_override_a_concurrent_add_just_made() -> None:
    store, clock, events = Interleaved(), ManualClock(T0), []
    alice = SharedOverrides(store, clock=clock, hooks=[events.append])
    bob = SharedOverrides(store, clock=clock, hooks=[events.append])
    await alice.add(made(until=T0 + 3600, n=1))
    newer = made(limits=["500/hour"], until=T0 + 7200, n=2)
    store.after("read", BOARD, lambda: bob.add(newer))  # bob replaces it as alice reads
    assert await alice.remove("reads", "acme", by="carol", reason="over") is None  # a 404
    assert [o.id for o in (await alice.read(clock.now())).values()] == [newer.id]
    clock.advance(3600)  # past the first one's expiry: the second is still in force
    assert await alice.sync() is True
    assert alice.live["reads acme"].limits == ("500/hour",)
    assert changes(await alice.audit(clock.now())) == [
        ("added", 1, "campaign"),
        ("added", 2, "campaign"),
        ("removed", 1, f"replaced by {newer.id}"),
    ]
    assert seen(events) == [("OverrideAdded", 1), ("OverrideRemoved", 1), ("OverrideAdded", 2)]


async def test_of_two_concurrent_adds_of_one_target_one_is_in_force_and_the_other_refused() -> None:
    store, clock, events = Interleaved(), ManualClock(T0), []
    alice = SharedOverrides(store, clock=clock, hooks=[events.append])
    bob = SharedOverrides(store, clock=clock, hooks=[events.append])
    store.after("read", BOARD, lambda: bob.add(made(limits=["500/hour"], n=2)))
    with pytest.raises(ValueError, match=r"a later override of reads acme .* is in force"):
        await alice.add(made(n=1))  # created at the same instant, and its id is less
    assert [o.limits for o in (await alice.read(clock.now())).values()] == [("500/hour",)]
    assert alice.live == {}
    clock.advance(600)
    await alice.sync()
    assert changes(await alice.audit(clock.now())) == [
        ("added", 2, "campaign"),
        ("added", 1, "campaign"),
        ("removed", 1, f"replaced by {made(n=2).id}"),  # never "in force" beside it
        ("expired", 2, "campaign"),
    ]
    assert seen(events) == [("OverrideAdded", 2), ("OverrideExpired", 2)]


async def test_two_concurrent_adds_never_take_the_overrides_past_max_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("surefoot.gateway._override_board.MAX_LIVE", 1)
    store, clock = Interleaved(), ManualClock(T0)
    alice, bob = SharedOverrides(store, clock=clock), SharedOverrides(store, clock=clock)
    store.after("read", BOARD, lambda: bob.add(made(client="globex", n=2)))
    with pytest.raises(ValueError, match="at most 1 overrides in force"):
        await alice.add(made(n=1))  # both read none in force; bob's was written first
    assert list(await alice.read(clock.now())) == ["reads globex"]
    assert changes(await alice.audit(clock.now()))[-1] == (
        "removed",
        1,
        "withdrawn: expected at most 1 overrides in force: remove one first",
    )


class FailingPut(MemoryStore):
    """A memory store whose puts on the overrides' board fail (after writing, if ``lost``:
    the reply was lost)."""

    fail = False
    lost = False

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        if self.fail and board == BOARD:
            if self.lost:
                await super().board_put(board, slot, value, expires_at, now)
            raise StoreUnavailable(retry_after=1)
        await super().board_put(board, slot, value, expires_at, now)


@pytest.mark.parametrize("lost", [False, True])
async def test_an_add_whose_write_fails_leaves_the_old_override_in_force_and_audited(
    lost: bool,
) -> None:
    store, clock, events = FailingPut(), ManualClock(T0), []
    worker = SharedOverrides(store, clock=clock, hooks=[events.append])
    await worker.add(made(until=T0 + 3600, n=1))
    store.fail, store.lost = True, lost
    with pytest.raises(StoreUnavailable):
        await worker.add(made(limits=["500/hour"], until=T0 + 7200, n=2))
    store.fail = False
    assert [o.id for o in (await worker.read(clock.now())).values()] == [made(n=1).id]
    assert worker.live["reads acme"].id == made(n=1).id
    clock.advance(7300)
    await worker.sync()
    assert changes(await worker.audit(clock.now())) == [
        ("added", 1, "campaign"),
        ("added", 2, "campaign"),
        ("removed", 2, "withdrawn: the store failed while it was added"),
        ("expired", 1, "campaign"),
    ]
    assert seen(events) == [("OverrideAdded", 1), ("OverrideExpired", 1)]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"for": 0.5}, "for: expected at least 1 second"),
        ({"for": None, "until": T0 + 0.5}, "until:"),
    ],
)
async def test_an_override_shorter_than_a_second_is_refused_naming_its_field(
    change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        refused = await post(r.admin, "/admin/overrides", body)
        detail = problem(refused, 400, "admin_bad_request")["detail"]
        assert field in detail
        assert "board" not in detail
        assert (await listed(r.admin)) == {"overrides": []}


@pytest.mark.parametrize("replaced", [False, True])
async def test_an_override_ended_early_is_never_audited_as_expired_later(replaced: bool) -> None:
    store, clock, events = MemoryStore(), ManualClock(T0), []
    maker = SharedOverrides(store, clock=clock, hooks=[events.append])
    await maker.add(made(until=T0 + 30 * 86400, n=1))
    clock.advance(60)
    if replaced:
        await maker.add(made(at=clock.now(), until=clock.now() + 3600, n=2))
    else:
        await maker.remove("reads", "acme", by="bob", reason="campaign cancelled")
    clock.advance(91 * 86400)  # past 90 days after the end, not after the first's expiry
    later = SharedOverrides(store, clock=clock, hooks=[events.append])
    await later.sync()
    assert of(events, OverrideExpired) == []
    rows = changes(await later.audit(clock.now()))
    assert [change for change, n, _ in rows if n == 1] == ["added", "removed"]


async def test_changes_made_without_hooks_are_events_once_on_the_workers() -> None:
    store, clock, events = MemoryStore(), ManualClock(T0), []
    cli = SharedOverrides(store, clock=clock)  # as ``surefoot overrides`` makes it
    workers = [SharedOverrides(store, clock=clock, hooks=[events.append]) for _ in range(2)]
    for worker in workers:
        await worker.sync()
    await cli.add(made(n=1))
    for worker in workers * 2:
        await worker.sync()
    await cli.add(made(limits=["500/hour"], n=2))  # replaces it
    for worker in workers * 2:
        await worker.sync()
    await cli.remove("reads", "acme", by="dave", reason="done")
    for worker in workers * 2:
        await worker.sync()
    assert seen(events) == [
        ("OverrideAdded", 1),
        ("OverrideAdded", 2),
        ("OverrideRemoved", 1),
        ("OverrideRemoved", 2),
    ]
    added, removed = of(events, OverrideAdded)[1], of(events, OverrideRemoved)
    assert added.replaced == made(n=1).id
    assert [(e.by, e.reason) for e in removed] == [
        ("alice", f"replaced by {made(n=2).id}"),
        ("dave", "done"),
    ]
    assert all(worker.live == {} for worker in workers)


async def test_a_corrupt_slot_is_skipped_and_every_other_override_applies() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    await SharedOverrides(store, clock=clock).add(made(n=1))
    data = json.loads(made(client="globex", n=2).encode())
    for bad in ({"id": 5}, {"id": None}, {"id": list("0" * 32)}, {"limits": [None]}):
        raw = json.dumps({**data, **bad}).encode()
        with pytest.raises(ValueError, match=r"^(id|limits): expected"):
            TemporaryOverride.decode(raw)
        await store.board_put(BOARD, f"bad {bad}", raw, T0 + 600, T0)
    await store.board_put(AUDIT, "ended x", b'{"change": "removed"}', T0 + 600, T0)
    worker = SharedOverrides(store, clock=clock)
    assert await worker.sync() is True
    assert list(worker.live) == ["reads acme"]
    assert [a["change"] for a in await worker.audit(clock.now())] == ["added"]


async def test_a_corrupt_slot_is_no_500_from_the_admin_api() -> None:
    async with running(config(), upstream=EchoUpstream(), clock=ManualClock(T0)) as r:
        raw = json.dumps({**json.loads(made().encode()), "id": 5}).encode()
        await r.gateway.overrides.store.board_put(BOARD, "reads acme", raw, T0 + 600, T0)
        assert (await listed(r.admin, "?audit=1")) == {"overrides": [], "audit": []}
        assert (await post(r.admin, "/admin/overrides", GOOD)).status_code == 201


@pytest.mark.parametrize("change", ["add", "remove"])
async def test_a_sync_read_while_its_worker_changes_an_override_never_undoes_it(
    change: str,
) -> None:
    store, clock = Interleaved(), ManualClock(T0)
    worker = SharedOverrides(store, clock=clock)
    if change == "remove":
        await worker.add(made(n=1))

    async def admin() -> None:
        if change == "add":
            await worker.add(made(n=1))
        else:
            await worker.remove("reads", "acme", by="bob", reason="done")

    store.after("read", BOARD, admin)  # the sync's read returns the board as it was
    assert await worker.sync() is False
    assert list(worker.live) == (["reads acme"] if change == "add" else [])
    assert await worker.sync() is False  # the next one reads it as the change left it
    assert list(worker.live) == (["reads acme"] if change == "add" else [])


async def test_a_superseded_override_is_ended_as_replaced_and_never_in_force_again() -> None:
    store, clock, events = MemoryStore(), ManualClock(T0), []
    first, second = made(until=T0 + 7200, n=1), made(limits=["9/hour"], at=T0 + 1, n=2)
    for override in (first, second):  # as two adds whose end of the older one failed
        await store.board_put(BOARD, override.id, override.encode(), override.expires_at, T0)
    worker = SharedOverrides(store, clock=clock, hooks=[events.append])
    clock.advance(2)
    assert await worker.sync() is True
    assert worker.live["reads acme"].id == second.id
    assert list(await store.board_read(BOARD, clock.now())) == [second.id]
    [removed] = of(events, OverrideRemoved)
    assert (removed.override_id, removed.reason) == (first.id, f"replaced by {second.id}")
    clock.advance(600)  # the second expired: the first, longer, never comes back
    await worker.sync()
    assert worker.live == {}
    assert await worker.read(clock.now()) == {}


async def test_a_removal_whose_delete_failed_ends_at_the_next_sweep() -> None:
    store, clock = MemoryStore(), ManualClock(T0)
    maker = SharedOverrides(store, clock=clock)
    await maker.add(made(until=T0 + 86400))

    async def fails(board: str, slot: str, now: float) -> bool:
        raise StoreUnavailable(retry_after=1)

    store.board_delete = fails  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await maker.remove("reads", "acme", by="bob", reason="done")
    del store.board_delete
    worker = SharedOverrides(store, clock=clock)
    await worker.sync()  # its first sync sweeps the audit trail
    assert worker.live == {}
    assert await store.board_read(BOARD, clock.now()) == {}


class FailingClaim(MemoryStore):
    """A memory store whose next claim on the events board fails."""

    fail = False

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        if self.fail and board == EVENTS:
            self.fail = False
            raise StoreUnavailable(retry_after=1)
        return await super().board_claim(board, slot, value, expires_at, now)


async def test_an_event_whose_claim_failed_is_emitted_at_the_next_sync() -> None:
    store, clock, events = FailingClaim(), ManualClock(T0), []
    await SharedOverrides(store, clock=clock).add(made(n=1))  # the CLI's: no event
    worker = SharedOverrides(store, clock=clock, hooks=[events.append])
    store.fail = True
    assert await worker.sync() is True  # in force all the same
    assert events == []
    assert await worker.sync() is False
    assert seen(events) == [("OverrideAdded", 1)]
    await worker.sync()
    assert len(events) == 1
