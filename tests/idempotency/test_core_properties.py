"""Hypothesis: any interleaving of begin / finish / expire / operator steps, from several
workers and principals, against a plain reference model, over every local store.

Properties checked on every step:
- at most one execution per scoped key at a time: a request is reserved only when no
  other holder's lease is live (and, after expiry, only in "reexecute" mode);
- a finisher is accepted only while its token is current (fencing);
- no principal ever receives another principal's stored response;
- every decision equals the reference model's.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from surefoot.idempotency import IdempotencyStore
from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Mismatch,
    Outcome,
    Replay,
    Reserved,
    Step,
    StoredResponse,
    Unknown,
    scoped_key,
)
from surefoot.storage import MemoryStore, SqliteStore

T = TypeVar("T")
LEASE, TTL = 10.0, 100.0
PRINCIPALS = ("cred:alice", "cred:bob", "addr:10.0.0.1")
KEYS = ("k1", "k2")


_LOOP = asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one store call to completion (stores may batch writes on the event loop)."""
    return _LOOP.run_until_complete(coro)


@dataclass
class ModelRecord:
    state: str  # "in_flight", "completed", "unknown"
    fp: str
    token: str
    lease_exp: float
    exp: float
    body: bytes | None = None


@dataclass
class Holder:
    skey: str
    principal: str
    token: str


@dataclass
class Model:
    records: dict[str, ModelRecord] = field(default_factory=dict)

    def live(self, skey: str, now: float) -> ModelRecord | None:
        rec = self.records.get(skey)
        if rec is not None and now >= rec.exp:
            del self.records[skey]
            return None
        return rec


class IdempotencyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.holders: list[Holder] = []
        self.now = 1_000.0
        self.tokens = 0
        self.executions = 0
        self.store: IdempotencyStore = MemoryStore()

    @initialize(kind=st.sampled_from(["memory", "sqlite"]))
    def choose_store(self, kind: str) -> None:
        if kind == "sqlite":
            self.tmp = tempfile.TemporaryDirectory()
            self.store = SqliteStore(Path(self.tmp.name) / "p.db")

    def teardown(self) -> None:
        run(self.store.aclose())
        if hasattr(self, "tmp"):
            self.tmp.cleanup()

    @rule(
        principal=st.sampled_from(PRINCIPALS),
        key=st.sampled_from(KEYS),
        variant=st.sampled_from(["a", "a", "a", "b"]),
        mode=st.sampled_from(["reexecute", "unknown"]),
    )
    def begin(self, principal: str, key: str, variant: str, mode: str) -> None:
        skey = scoped_key(principal, key)
        self.tokens += 1
        token = f"t{self.tokens}"
        fp = f"{key}:{variant}"
        request = Begin(fingerprint=fp, token=token, lease=LEASE, ttl=TTL, on_lease_expiry=mode)  # type: ignore[arg-type]
        decision = run(self.store.begin(skey, request, self.now))
        rec = self.model.live(skey, self.now)
        if rec is None:
            assert isinstance(decision, Reserved)
            assert not decision.took_over
            self._reserve(skey, principal, token, fp)
        elif rec.fp != fp:
            assert decision == Mismatch()
        elif rec.state == "in_flight" and self.now < rec.lease_exp:
            assert decision == InProgress(rec.lease_exp)
        elif rec.state == "in_flight" and mode == "reexecute":
            assert isinstance(decision, Reserved)
            assert decision.took_over
            self._reserve(skey, principal, token, fp)
        elif rec.state == "in_flight":
            assert decision == Unknown(lease_expired_now=True)
            rec.state = "unknown"
        elif rec.state == "completed":
            assert isinstance(decision, Replay)
            # The body names the principal that executed it: never another's response.
            assert decision.response.body == rec.body
            assert decision.response.body is not None
            assert decision.response.body.startswith(principal.encode() + b"|")
        else:
            assert decision == Unknown(lease_expired_now=False)

    def _reserve(self, skey: str, principal: str, token: str, fp: str) -> None:
        for other in self.holders:
            rec = self.model.records.get(skey)
            if other.skey == skey and rec is not None and rec.token == other.token:
                assert self.now >= rec.lease_exp, "two live holders for one key"
        self.model.records[skey] = ModelRecord(
            "in_flight", fp, token, self.now + LEASE, self.now + TTL
        )
        self.holders.append(Holder(skey, principal, token))
        self.executions += 1

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), step=st.sampled_from([Step.COMPLETE, Step.RELEASE, Step.MARK_UNKNOWN]))
    def finish(self, data: st.DataObject, step: Step) -> None:
        holder = self.holders.pop(data.draw(st.integers(0, len(self.holders) - 1)))
        body = f"{holder.principal}|{holder.token}".encode()
        response = StoredResponse(201, ((b"x", b"y"),), body) if step is Step.COMPLETE else None
        outcome = Outcome(step, response)  # type: ignore[arg-type]
        accepted = run(self.store.finish(holder.skey, holder.token, outcome, self.now))
        rec = self.model.live(holder.skey, self.now)
        expected = rec is not None and rec.token == holder.token and rec.state != "completed"
        assert accepted == expected
        if not accepted or rec is None:
            return
        if step is Step.RELEASE:
            del self.model.records[holder.skey]
        else:
            rec.state = "completed" if step is Step.COMPLETE else "unknown"
            rec.body = body if step is Step.COMPLETE else None
            rec.exp = self.now + TTL

    @rule(dt=st.sampled_from([0.5, 3.0, LEASE, TTL / 2, TTL]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(principal=st.sampled_from(PRINCIPALS), key=st.sampled_from(KEYS))
    def operator_resolves(self, principal: str, key: str) -> None:
        skey = scoped_key(principal, key)
        body = f"{principal}|resolved".encode()
        accepted = run(self.store.resolve(skey, StoredResponse(200, (), body), self.now))
        rec = self.model.live(skey, self.now)
        expected = rec is not None and (
            rec.state == "unknown" or (rec.state == "in_flight" and self.now >= rec.lease_exp)
        )
        assert accepted == expected
        if accepted and rec is not None:
            rec.state, rec.body, rec.exp = "completed", body, self.now + TTL

    @rule(principal=st.sampled_from(PRINCIPALS), key=st.sampled_from(KEYS))
    def operator_forgets(self, principal: str, key: str) -> None:
        skey = scoped_key(principal, key)
        accepted = run(self.store.forget(skey, self.now))
        assert accepted == (self.model.live(skey, self.now) is not None)
        self.model.records.pop(skey, None)

    @invariant()
    def store_agrees_with_model(self) -> None:
        for principal in PRINCIPALS:
            for key in KEYS:
                skey = scoped_key(principal, key)
                stored = run(self.store.get(skey, self.now))
                rec = self.model.live(skey, self.now)
                assert (stored is None) == (rec is None)
                if stored is not None and rec is not None:
                    assert stored.token == rec.token
                    assert stored.state.value == rec.state


IdempotencyMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestIdempotencyMachine = IdempotencyMachine.TestCase
