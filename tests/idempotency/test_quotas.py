"""Store capacity cannot be used against other clients (issue 12, item 8).

Per-principal quotas of idempotency records (``IdempotencyPolicy.max_records_per_principal``
and ``max_unknown_per_principal``, ``_core`` Rule 7) and a ``MemoryStore`` that refuses
new keys when full rather than drop a live record, as clients of the middleware see them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from surefoot._asgi import Receive, Scope, Send
from surefoot.events import Event
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy, RecordsExceeded
from surefoot.idempotency._core import Begin, Decision
from surefoot.identity import Identity
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


class Ledger:
    """An ASGI app that charges: counts each execution per (credential, key), and answers
    500 to the credentials in ``failing`` (their outcome becomes unknown)."""

    def __init__(self) -> None:
        self.executions: Counter[tuple[str, str]] = Counter()
        self.failing: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        who = headers.get(b"authorization", b"").decode()
        self.executions[who, headers.get(b"idempotency-key", b"").decode()] += 1
        while (await receive()).get("more_body"):
            pass
        status = 500 if who in self.failing else 201
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://api.test"
    ) as c:
        yield c


def charge(c: httpx.AsyncClient, api_key: str, key: str) -> Any:
    headers = {"authorization": f"Bearer {api_key}", "idempotency-key": key}
    return c.post("/charges", content=b'{"amount": 100}', headers=headers)


async def test_a_victims_record_survives_thousands_of_other_clients_keys(
    ledger: Ledger,
) -> None:
    # The memory store: 2,000 records, filled by 2,100 keyed POSTs of other API
    # keys. It used to evict the victim's completed record inside its TTL, and the
    # victim's retry executed a second time.
    store = MemoryStore(max_records=2000)
    app = IdempotencyMiddleware(ledger, store=store, clock=ManualClock(), hooks=[])
    async for c in client(app):
        assert (await charge(c, "victim", "order-1")).status_code == 201
        answers = [await charge(c, f"other-{n}", f"k-{n}") for n in range(2100)]
        retry = await charge(c, "victim", "order-1")
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 1999, 503: 101}  # refused, never evicting a live record
    # Until the first record expires (the victim's, a day later: the clock stood still),
    # not the 1 s it used to say.
    assert answers[-1].headers["retry-after"] == "86400"
    assert answers[-1].json()["retry_after"] == 86400
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert ledger.executions["Bearer victim", "order-1"] == 1


async def test_unknown_outcomes_of_one_client_never_block_another(
    ledger: Ledger, events: list[Event]
) -> None:
    # One client whose every charge ends outcome unknown (the upstream fails after doing
    # who knows what). It used to fill the store with 2,000 records nothing may evict,
    # and every other client's first keyed POST was a 503 for the records' TTL.
    store = MemoryStore(max_records=2000)
    policy = IdempotencyPolicy(on_server_error="unknown", max_unknown_per_principal=1000)
    app = IdempotencyMiddleware(
        ledger, store=store, policy=policy, clock=ManualClock(), hooks=[events.append]
    )
    ledger.failing.add("Bearer noisy")
    async for c in client(app):
        answers = [await charge(c, "noisy", f"k-{n}") for n in range(2000)]
        first = await charge(c, "quiet", "order-1")
    assert Counter(a.status_code for a in answers) == {500: 1000, 429: 1000}
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "idempotency_records_exceeded"
    assert "1000 live idempotency records (of unknown outcome)" in problem["detail"]
    assert problem["retry_after"] == 86400
    assert refused.headers["retry-after"] == "86400"
    assert sum(n for (who, _), n in ledger.executions.items() if who == "Bearer noisy") == 1000
    assert first.status_code == 201
    exceeded = [e for e in events if isinstance(e, RecordsExceeded)]
    assert len(exceeded) == 1000
    assert (exceeded[0].kind, exceeded[0].limit) == ("unknown", 1000)


async def test_a_client_at_its_quota_waits_for_its_first_record_to_expire(
    ledger: Ledger,
) -> None:
    clock = ManualClock()
    policy = IdempotencyPolicy(max_records_per_principal=3, ttl=3600)
    app = IdempotencyMiddleware(ledger, store=MemoryStore(), policy=policy, clock=clock, hooks=[])
    async for c in client(app):
        for n in range(3):
            assert (await charge(c, "busy", f"k-{n}")).status_code == 201
            clock.advance(100)
        refused = await charge(c, "busy", "k-3")
        other = await charge(c, "calm", "k-3")
        replay = await charge(c, "busy", "k-0")  # its own records still answer
        clock.advance(3600 - 300)  # k-0 expires
        again = await charge(c, "busy", "k-3")
    assert refused.status_code == 429
    assert refused.json()["retry_after"] == 3300  # k-0, stored at 0, expires at 3600
    assert "3 live idempotency records (in all)" in refused.json()["detail"]
    assert ledger.executions["Bearer busy", "k-3"] == 1  # refused: not executed
    assert other.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert again.status_code == 201


class QuotaSpy(MemoryStore):
    """A memory store that keeps the quotas each reservation was asked to apply."""

    def __init__(self) -> None:
        super().__init__()
        self.quotas: set[tuple[int, int]] = set()

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        self.quotas.add((request.max_records, request.max_unknown))
        return await super().begin(key, request, now)


async def test_quotas_are_opt_in_in_the_library() -> None:
    # Many users behind one load balancer, identified by a cookie, are one principal: a
    # library default of 10,000 records capped them all together, silently. The app
    # decides; only the gateway (tests/gateway/test_store_capacity.py) sets quotas.
    ledger = Ledger()
    store = QuotaSpy()
    app = IdempotencyMiddleware(ledger, store=store, hooks=[])
    async for c in client(app):
        statuses = {(await charge(c, "bulk", f"k-{n}")).status_code for n in range(5)}
    assert statuses == {201}
    assert store.quotas == {(0, 0)}  # 0: no quota (Begin's convention)
    assert IdempotencyPolicy().max_records_per_principal is None
    assert IdempotencyPolicy().max_unknown_per_principal is None


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_quota_fields_are_whole_numbers(value: object) -> None:
    from surefoot.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_records_per_principal: expected a whole"):
        IdempotencyPolicy(max_records_per_principal=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_unknown_per_principal: expected a whole"):
        IdempotencyPolicy(max_unknown_per_principal=value)  # type: ignore[arg-type]


async def test_made_up_credentials_share_their_addresss_quota_but_never_their_records(
    ledger: Ledger,
) -> None:
    # Without this, every made-up API key would bring a fresh quota of its own.
    identity = Identity(known_credentials=["sk_listed"])
    app = IdempotencyMiddleware(
        ledger,
        store=MemoryStore(),
        policy=IdempotencyPolicy(max_records_per_principal=2),
        principal=identity,
        clock=ManualClock(),
        hooks=[],
    )
    async for c in client(app):
        made_up = [(await charge(c, f"junk-{n}", f"k-{n}")).status_code for n in range(3)]
        listed = (await charge(c, "sk_listed", "k-0")).status_code
        # The same key under two made-up credentials is two requests, never a replay.
        other = await charge(c, "junk-1", "k-0")
    assert made_up == [201, 201, 429]
    assert listed == 201  # a listed key's quota is its own
    assert other.status_code == 429  # a new record for the address: over its quota
    assert ledger.executions[("Bearer junk-0", "k-0")] == 1
    assert ledger.executions[("Bearer junk-1", "k-0")] == 0
