"""The idempotency state machine: the transition table, exhaustively, and its rules."""

from __future__ import annotations

import pytest

from surefoot.idempotency._core import (
    TRANSITIONS,
    Begin,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Record,
    Replay,
    Reserved,
    Ruling,
    State,
    Step,
    StoredResponse,
    Unknown,
    Usage,
    begin,
    charges_quota,
    classify,
    finish,
    forget,
    key_owner,
    resolve,
    scoped_key,
)

T0 = 1_000.0
LEASE, TTL = 30.0, 3600.0
RESPONSE = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
S, St, R = State, Step, Ruling


def req(fp: str = "fp", token: str = "t2", mode: str = "unknown") -> Begin:
    return Begin(fingerprint=fp, token=token, lease=LEASE, ttl=TTL, on_lease_expiry=mode)  # type: ignore[arg-type]


def record(state: State, *, token: str = "t1", response: StoredResponse | None = None) -> Record:
    return Record(state, "fp", token, 1, T0 + LEASE, T0 + TTL, TTL, response)


# One concrete (record, now) per observable state.
OBSERVED: dict[State, tuple[Record | None, float]] = {
    S.ABSENT: (None, T0),
    S.IN_FLIGHT: (record(S.IN_FLIGHT), T0 + 1),
    S.LEASE_EXPIRED: (record(S.IN_FLIGHT), T0 + LEASE),
    S.COMPLETED: (record(S.COMPLETED, response=RESPONSE), T0 + 1),
    S.UNKNOWN: (record(S.UNKNOWN), T0 + 1),
}

EXPECTED: dict[tuple[State, Step], tuple[State, Ruling]] = {
    (S.ABSENT, St.BEGIN_REEXECUTE): (S.IN_FLIGHT, R.RESERVE),
    (S.ABSENT, St.BEGIN_UNKNOWN): (S.IN_FLIGHT, R.RESERVE),
    (S.ABSENT, St.COMPLETE): (S.ABSENT, R.REFUSE),
    (S.ABSENT, St.RELEASE): (S.ABSENT, R.REFUSE),
    (S.ABSENT, St.MARK_UNKNOWN): (S.ABSENT, R.REFUSE),
    (S.ABSENT, St.RESOLVE): (S.ABSENT, R.REFUSE),
    (S.ABSENT, St.FORGET): (S.ABSENT, R.REFUSE),
    (S.IN_FLIGHT, St.BEGIN_REEXECUTE): (S.IN_FLIGHT, R.IN_PROGRESS),
    (S.IN_FLIGHT, St.BEGIN_UNKNOWN): (S.IN_FLIGHT, R.IN_PROGRESS),
    (S.IN_FLIGHT, St.COMPLETE): (S.COMPLETED, R.ACCEPT),
    (S.IN_FLIGHT, St.RELEASE): (S.ABSENT, R.ACCEPT),
    (S.IN_FLIGHT, St.MARK_UNKNOWN): (S.UNKNOWN, R.ACCEPT),
    (S.IN_FLIGHT, St.RESOLVE): (S.IN_FLIGHT, R.REFUSE),
    (S.IN_FLIGHT, St.FORGET): (S.ABSENT, R.ACCEPT),
    (S.LEASE_EXPIRED, St.BEGIN_REEXECUTE): (S.IN_FLIGHT, R.TAKE_OVER),
    (S.LEASE_EXPIRED, St.BEGIN_UNKNOWN): (S.UNKNOWN, R.EXPIRE_TO_UNKNOWN),
    (S.LEASE_EXPIRED, St.COMPLETE): (S.COMPLETED, R.ACCEPT),
    (S.LEASE_EXPIRED, St.RELEASE): (S.ABSENT, R.ACCEPT),
    (S.LEASE_EXPIRED, St.MARK_UNKNOWN): (S.UNKNOWN, R.ACCEPT),
    (S.LEASE_EXPIRED, St.RESOLVE): (S.COMPLETED, R.ACCEPT),
    (S.LEASE_EXPIRED, St.FORGET): (S.ABSENT, R.ACCEPT),
    (S.COMPLETED, St.BEGIN_REEXECUTE): (S.COMPLETED, R.REPLAY),
    (S.COMPLETED, St.BEGIN_UNKNOWN): (S.COMPLETED, R.REPLAY),
    (S.COMPLETED, St.COMPLETE): (S.COMPLETED, R.REFUSE),
    (S.COMPLETED, St.RELEASE): (S.COMPLETED, R.REFUSE),
    (S.COMPLETED, St.MARK_UNKNOWN): (S.COMPLETED, R.REFUSE),
    (S.COMPLETED, St.RESOLVE): (S.COMPLETED, R.REFUSE),
    (S.COMPLETED, St.FORGET): (S.ABSENT, R.ACCEPT),
    (S.UNKNOWN, St.BEGIN_REEXECUTE): (S.UNKNOWN, R.REPORT_UNKNOWN),
    (S.UNKNOWN, St.BEGIN_UNKNOWN): (S.UNKNOWN, R.REPORT_UNKNOWN),
    (S.UNKNOWN, St.COMPLETE): (S.COMPLETED, R.ACCEPT),
    (S.UNKNOWN, St.RELEASE): (S.ABSENT, R.ACCEPT),
    (S.UNKNOWN, St.MARK_UNKNOWN): (S.UNKNOWN, R.ACCEPT),
    (S.UNKNOWN, St.RESOLVE): (S.COMPLETED, R.ACCEPT),
    (S.UNKNOWN, St.FORGET): (S.ABSENT, R.ACCEPT),
}


def test_table_is_total_and_as_specified() -> None:
    assert set(TRANSITIONS) == {(s, st) for s in State for st in Step}
    assert TRANSITIONS == EXPECTED


def apply(state: State, step: Step) -> tuple[State, bool, object]:
    """Run ``step`` through the public functions; return (observed next state, accepted, result)."""
    rec, now = OBSERVED[state]
    result: object
    if step in (St.BEGIN_REEXECUTE, St.BEGIN_UNKNOWN):
        mode = "reexecute" if step is St.BEGIN_REEXECUTE else "unknown"
        result, new = begin(rec, req(mode=mode), now)
        accepted = isinstance(result, Reserved)
    elif step is St.RESOLVE:
        accepted, new = resolve(rec, RESPONSE, now)
        result = accepted
    elif step is St.FORGET:
        accepted, new = forget(rec, now)
        result = accepted
    else:
        response = RESPONSE if step is St.COMPLETE else None
        accepted, new = finish(rec, "t1", Outcome(step, response), now)  # type: ignore[arg-type]
        result = accepted
    return classify(new, now), accepted, result


@pytest.mark.parametrize(
    ("state", "step"), sorted(EXPECTED, key=lambda k: (k[0].value, k[1].value))
)
def test_every_transition_through_the_functions(state: State, step: Step) -> None:
    target, ruling = EXPECTED[state, step]
    observed, accepted, result = apply(state, step)
    assert observed is target
    if ruling in (R.ACCEPT, R.RESERVE, R.TAKE_OVER):
        assert accepted
    if ruling is R.REFUSE:
        assert not accepted
    if ruling is R.IN_PROGRESS:
        assert result == InProgress(T0 + LEASE)
    if ruling is R.REPLAY:
        assert result == Replay(RESPONSE)
    if ruling is R.REPORT_UNKNOWN:
        assert result == Unknown(lease_expired_now=False)
    if ruling is R.EXPIRE_TO_UNKNOWN:
        assert result == Unknown(lease_expired_now=True)
    if ruling is R.TAKE_OVER:
        assert result == Reserved("t2", 2, took_over=True)
    if ruling is R.RESERVE:
        assert result == Reserved("t2", 1, took_over=False)


@pytest.mark.parametrize("state", [s for s in State if s is not S.ABSENT])
def test_fingerprint_mismatch_wins_over_every_state(state: State) -> None:
    rec, now = OBSERVED[state]
    decision, new = begin(rec, req(fp="other"), now)
    assert decision == Mismatch()
    assert new is rec


@pytest.mark.parametrize("step", [St.COMPLETE, St.RELEASE, St.MARK_UNKNOWN])
@pytest.mark.parametrize("state", [S.IN_FLIGHT, S.LEASE_EXPIRED, S.UNKNOWN])
def test_finish_with_another_token_is_fenced_out(state: State, step: Step) -> None:
    rec, now = OBSERVED[state]
    response = RESPONSE if step is St.COMPLETE else None
    accepted, new = finish(rec, "stale", Outcome(step, response), now)  # type: ignore[arg-type]
    assert not accepted
    assert new is rec


def test_late_finisher_after_take_over_cannot_overwrite() -> None:
    first, _ = begin(None, req(token="a", mode="reexecute"), T0)
    assert isinstance(first, Reserved)
    _, rec = begin(None, req(token="a", mode="reexecute"), T0)
    second, rec = begin(rec, req(token="b", mode="reexecute"), T0 + LEASE + 1)
    assert second == Reserved("b", 2, took_over=True)
    ok, rec = finish(rec, "b", Outcome(St.COMPLETE, RESPONSE), T0 + LEASE + 2)
    assert ok
    late = StoredResponse(500, (), b"late")
    ok, after = finish(rec, "a", Outcome(St.COMPLETE, late), T0 + LEASE + 3)
    assert not ok
    assert after == rec
    assert begin(after, req(), T0 + LEASE + 4)[0] == Replay(RESPONSE)


def test_completed_record_without_body_is_not_stored() -> None:
    rec = record(S.COMPLETED, response=StoredResponse(200, (), None))
    assert begin(rec, req(), T0 + 1)[0] == NotStored(200)


def test_ttl_expiry_makes_any_record_absent() -> None:
    for state in (S.IN_FLIGHT, S.COMPLETED, S.UNKNOWN):
        rec = record(state, response=RESPONSE)
        assert classify(rec, T0 + TTL) is S.ABSENT
        decision, new = begin(rec, req(fp="anything"), T0 + TTL)
        assert decision == Reserved("t2", 1, took_over=False)
        assert new is not None
        assert new.expires_at == T0 + 2 * TTL


def test_settling_refreshes_the_ttl_and_keeps_the_response() -> None:
    rec = record(S.IN_FLIGHT)
    ok, new = finish(rec, "t1", Outcome(St.COMPLETE, RESPONSE), T0 + 10)
    assert ok
    assert new is not None
    assert new.expires_at == T0 + 10 + TTL
    assert new.response == RESPONSE


def test_completing_without_a_response_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs the response"):
        finish(record(S.IN_FLIGHT), "t1", Outcome(St.COMPLETE), T0 + 1)


def test_scoped_keys_separate_principals_routes_and_keys() -> None:
    keys = {
        scoped_key("cred:a", "k"),
        scoped_key("cred:b", "k"),
        scoped_key("cred:a", "k", "POST /x"),
        scoped_key("cred:a", "k2"),
        # Length-prefixing: no concatenation ambiguity.
        scoped_key("cred:ak", ""),
        scoped_key("cred:a", "k", ""),
    }
    assert len(keys) == 5  # route "" equals no route
    assert scoped_key("cred:a", "k") == scoped_key("cred:a", "k")
    assert all(k.startswith("idem:") for k in keys)


# -- Rule 7: per-principal quotas ------------------------------------------------------------

INF = float("inf")


def quota(records: int = 0, unknown: int = 0, mode: str = "unknown") -> Begin:
    return req(mode=mode)._replace(max_records=records, max_unknown=unknown)


def test_store_keys_name_their_owner_a_hash_of_the_principal_alone() -> None:
    a1, a2 = scoped_key("cred:a", "k1"), scoped_key("cred:a", "k2", "POST /x")
    b1 = scoped_key("cred:b", "k1")
    assert key_owner(a1) == key_owner(a2) != key_owner(b1)
    assert len(key_owner(a1)) == 20
    assert a1.startswith(f"idem:{key_owner(a1)}:")
    # Any other key belongs to no one.
    for other in ("k", "idem:unknown", "lookup:" + a1, a1 + "0", a1.upper(), "idem:" + "0" * 60):
        assert key_owner(other) == ""


@pytest.mark.parametrize(
    ("usage", "request_", "expected"),
    [
        # Under both quotas: reserved.
        (Usage(2, 0, T0 + 5, INF), quota(records=3, unknown=1), None),
        # At the records quota: refused until the first record expires.
        (Usage(3, 0, T0 + 5, INF), quota(records=3), OverQuota("records", 3, 5.0)),
        # At the unknown quota, which is reported first.
        (Usage(3, 1, T0 + 5, T0 + 9), quota(records=3, unknown=1), OverQuota("unknown", 1, 9.0)),
        # A quota of 0 is none, whatever the usage.
        (Usage(10**6, 10**6, T0, T0), quota(), None),
        (Usage(10**6, 0, T0, INF), quota(unknown=1), None),
    ],
)
def test_a_new_record_is_decided_on_the_owners_usage(
    usage: Usage, request_: Begin, expected: OverQuota | None
) -> None:
    decision, new = begin(None, request_, T0, usage)
    if expected is None:
        assert isinstance(decision, Reserved)
        assert new is not None
    else:
        assert decision == expected
        assert new is None  # refused: nothing to store


def test_a_quota_refusal_leaves_an_expired_record_as_it_was() -> None:
    old = record(S.COMPLETED, response=RESPONSE)
    decision, new = begin(old, quota(records=1), T0 + TTL, Usage(1, 0, T0 + TTL + 3, INF))
    assert decision == OverQuota("records", 1, 3.0)
    assert new is old


def test_only_a_begin_that_would_create_a_record_needs_the_usage() -> None:
    assert charges_quota(None, quota(records=1), T0)
    assert charges_quota(record(S.COMPLETED, response=RESPONSE), quota(unknown=1), T0 + TTL)
    assert not charges_quota(None, quota(), T0)  # no quota
    for state in (S.IN_FLIGHT, S.LEASE_EXPIRED, S.COMPLETED, S.UNKNOWN):
        rec, now = OBSERVED[state]
        assert not charges_quota(rec, quota(records=1, unknown=1, mode="reexecute"), now)


def test_take_overs_replays_and_conflicts_are_never_refused() -> None:
    full = Usage(5, 5, T0, T0)
    for state, expected in (
        (S.LEASE_EXPIRED, Reserved),
        (S.IN_FLIGHT, InProgress),
        (S.COMPLETED, Replay),
        (S.UNKNOWN, Unknown),
    ):
        rec, now = OBSERVED[state]
        decision, _ = begin(rec, quota(records=1, unknown=1, mode="reexecute"), now, full)
        assert isinstance(decision, expected)
