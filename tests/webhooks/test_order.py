"""The ordering guard's state machine: every (state, step) pair, and its rules as properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surefoot.webhooks import (
    KEY_PREFIX,
    Claim,
    OrderRecord,
    OrderState,
    Verdict,
    claim,
    order_state,
    ordering_key,
    settle,
)

T0 = 1_000.0
LEASE, RETENTION = 30.0, 3600.0
P, S, B = Verdict.PROCEED, Verdict.STALE, Verdict.BUSY

# One record per observable state, each read at T0; newest 5, the holder "t1" holding 7.
RECORDS: dict[str, OrderRecord | None] = {
    "absent": None,
    "expired": OrderRecord(5.0, "t1", 7.0, T0 - 1, T0),
    "free": OrderRecord(5.0, None, None, T0 - 100, T0 + 1000),
    "lapsed": OrderRecord(5.0, "t1", 7.0, T0 - 1, T0 + 1000),  # the holder died
    "held": OrderRecord(5.0, "t1", 7.0, T0 + 20, T0 + 1000),
}
STATES = {
    "absent": OrderState.ABSENT,
    "expired": OrderState.ABSENT,
    "free": OrderState.FREE,
    "lapsed": OrderState.FREE,
    "held": OrderState.HELD,
}
UNCHANGED = "unchanged"


def held(newest: float | None, token: str, version: float) -> OrderRecord:
    """What a claim at T0 that proceeds stores."""
    return OrderRecord(newest, token, version, T0 + LEASE, T0 + RETENTION)


def freed(newest: float | None) -> OrderRecord:
    """What the holder's settle at T0 stores."""
    return OrderRecord(newest, None, None, T0, T0 + RETENTION)


# (state, claimant's token, version) -> (the record stored, or UNCHANGED; the answer)
CLAIMS: dict[tuple[str, str, float], tuple[Any, Claim]] = {}
for _state in ("absent", "expired"):
    for _token, _v in (("t2", 3.0), ("t2", 5.0), ("t2", 9.0), ("t1", 9.0)):
        CLAIMS[_state, _token, _v] = (held(None, _token, _v), Claim(P, None, T0 + LEASE))
for _state, _until in (("free", T0 - 100), ("lapsed", T0 - 1), ("held", T0 + 20)):
    # Older than newest: stale, whoever holds the record (Rule 2).
    CLAIMS[_state, "t2", 3.0] = (UNCHANGED, Claim(S, 5.0, _until))
    CLAIMS[_state, "t1", 3.0] = (UNCHANGED, Claim(S, 5.0, _until))
    for _v in (5.0, 9.0):  # equal to newest is not stale
        if _state == "held":
            CLAIMS[_state, "t2", _v] = (UNCHANGED, Claim(B, 5.0, T0 + 20))
        else:
            CLAIMS[_state, "t2", _v] = (held(5.0, "t2", _v), Claim(P, 5.0, T0 + LEASE))
    # The holder's own token renews its lease (Rule 3).
    CLAIMS[_state, "t1", 9.0] = (held(5.0, "t1", 9.0), Claim(P, 5.0, T0 + LEASE))


@pytest.mark.parametrize(("state", "token", "version"), sorted(CLAIMS))
def test_claim(state: str, token: str, version: float) -> None:
    record = RECORDS[state]
    assert order_state(record, T0) is STATES[state]
    want_record, want_claim = CLAIMS[state, token, version]
    new, got = claim(record, version=version, token=token, now=T0, lease=LEASE, retention=RETENTION)
    assert got == want_claim
    if want_record == UNCHANGED:
        assert new is record
    else:
        assert new == want_record
        assert order_state(new, T0) is OrderState.HELD


# (state, settler's token, version, ok) -> the record stored, or UNCHANGED
SETTLES: dict[tuple[str, str, float, bool], Any] = {}
for _state in ("absent", "expired"):
    # A late settle whose record expired: its work counts (Rule 5), a failure nothing.
    for _token, _v in (("t1", 7.0), ("t2", 3.0), ("t2", 9.0)):
        SETTLES[_state, _token, _v, True] = freed(_v)
        SETTLES[_state, _token, _v, False] = UNCHANGED
# The holder's settle frees the record; ok raises newest (Rule 4).
for _state in ("lapsed", "held"):
    SETTLES[_state, "t1", 7.0, True] = freed(7.0)
    SETTLES[_state, "t1", 3.0, True] = freed(5.0)  # newest never decreases
    SETTLES[_state, "t1", 7.0, False] = freed(5.0)
# Fenced out (not the holder): ok raises newest and leaves the holder alone; the rest
# changes nothing (Rule 5).
SETTLES["free", "t1", 7.0, True] = OrderRecord(7.0, None, None, T0 - 100, T0 + RETENTION)
SETTLES["free", "t1", 3.0, True] = UNCHANGED
SETTLES["free", "t1", 7.0, False] = UNCHANGED
for _state, _until in (("free", T0 - 100), ("lapsed", T0 - 1), ("held", T0 + 20)):
    _holder, _holding = (None, None) if _state == "free" else ("t1", 7.0)
    SETTLES[_state, "t2", 9.0, True] = OrderRecord(9.0, _holder, _holding, _until, T0 + RETENTION)
    SETTLES[_state, "t2", 5.0, True] = UNCHANGED  # equal: nothing to add
    SETTLES[_state, "t2", 3.0, True] = UNCHANGED
    SETTLES[_state, "t2", 9.0, False] = UNCHANGED


@pytest.mark.parametrize(("state", "token", "version", "ok"), sorted(SETTLES))
def test_settle(state: str, token: str, version: float, ok: bool) -> None:
    record = RECORDS[state]
    new = settle(record, token=token, version=version, ok=ok, now=T0, retention=RETENTION)
    want = SETTLES[state, token, version, ok]
    if want == UNCHANGED:
        assert new is record
    else:
        assert new == want


def test_a_record_never_expires_while_its_holder_s_lease_runs() -> None:
    new, got = claim(None, version=1, token="t", now=T0, lease=100, retention=10)
    assert got == Claim(P, None, T0 + 100)
    assert new == OrderRecord(None, "t", 1, T0 + 100, T0 + 100)
    assert order_state(new, T0 + 99) is OrderState.HELD
    assert order_state(new, T0 + 100) is OrderState.ABSENT
    # A fenced-out settle that raises newest keeps the holder's lease inside the expiry.
    late = settle(new, token="other", version=2, ok=True, now=T0 + 1, retention=10)
    assert late == OrderRecord(2, "t", 1, T0 + 100, T0 + 100)


def test_versions_compare_as_numbers() -> None:
    record = OrderRecord(10, None, None, T0, T0 + RETENTION)
    kw: dict[str, Any] = {"token": "t", "now": T0, "lease": LEASE, "retention": RETENTION}
    assert claim(record, version=9.999, **kw)[1].verdict is S
    assert claim(record, version=10.0, **kw)[1].verdict is P
    assert claim(record, version=1e3, **kw)[1].verdict is P
    assert claim(record, version=-1, **kw)[1].verdict is S


def test_ordering_keys_are_bounded_and_never_show_the_object_id() -> None:
    key = ordering_key("stripe", "cus_" + "x" * 10_000)
    assert key.startswith(KEY_PREFIX)
    assert len(key) == len(KEY_PREFIX) + 40
    assert "cus_" not in key
    assert ordering_key("stripe", "cus_1") == ordering_key("stripe", "cus_1")
    # Each (endpoint, object) its own key, however the two split one string.
    keys = {ordering_key(e, o) for e, o in (("ab", "c"), ("a", "bc"), ("abc", ""), ("", "abc"))}
    assert len(keys) == 4
    assert ordering_key("a", "\udcff").startswith(KEY_PREFIX)  # any str, even unpaired


# -- properties -----------------------------------------------------------------------------

TOKENS = ("a", "b", "c")
steps = st.lists(
    st.tuples(
        st.sampled_from(("claim", "settle")),
        st.sampled_from(TOKENS),
        st.integers(0, 6).map(float),  # versions
        st.booleans(),  # ok
        st.sampled_from((0.0, 0.0, 1.0, 10.0, 40.0)),  # time passing before the step
        st.sampled_from((10.0, 30.0)),  # lease
        st.sampled_from((5.0, 100.0)),  # retention
    ),
    max_size=40,
)


def _newest(record: OrderRecord | None, now: float) -> float:
    if order_state(record, now) is OrderState.ABSENT:
        return -1.0
    assert record is not None
    return -1.0 if record.newest is None else record.newest


@given(steps)
def test_properties(script: list[tuple[str, str, float, bool, float, float, float]]) -> None:
    record: OrderRecord | None = None
    now = T0
    leases: dict[str, float] = {}  # granted and not settled: token -> until
    for kind, token, version, ok, wait, lease, retention in script:
        now += wait
        before = _newest(record, now)
        if kind == "claim":
            new, got = claim(
                record, version=version, token=token, now=now, lease=lease, retention=retention
            )
            if got.verdict is not P:
                # A refused claim changes nothing.
                assert new is record
            else:
                # At most one live holder: nobody else's lease runs when one is granted.
                assert all(until <= now for t, until in leases.items() if t != token)
                leases[token] = got.until
                assert order_state(new, now) is OrderState.HELD
            assert (got.verdict is S) == (version < before)
            if got.verdict is B:
                assert got.until > now
                assert any(until == got.until > now for until in leases.values())
        else:
            new = settle(record, token=token, version=version, ok=ok, now=now, retention=retention)
            leases.pop(token, None)
            if ok:
                assert _newest(new, now) == max(before, version)
        after = _newest(new, now)
        # newest never decreases (while the record lives), and only a good settle raises it.
        assert after >= before
        if after > before:
            assert kind == "settle"
            assert ok
        record = new
