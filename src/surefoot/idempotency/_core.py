"""Idempotency records as a sans-I/O state machine.

One record per *scoped key* (principal, optional route, client key). Stored states are
``IN_FLIGHT``, ``COMPLETED`` and ``UNKNOWN``; a missing or TTL-expired record is
``ABSENT``, and an ``IN_FLIGHT`` record whose lease has run out is observed as
``LEASE_EXPIRED`` (derived from ``now``, never stored)::

                      begin                      finish(COMPLETE)
    ABSENT ──begin──► IN_FLIGHT ──finish(COMPLETE)──► COMPLETED ──ttl──► ABSENT
                        │  │  └──finish(RELEASE)──► ABSENT
                        │  └──finish(MARK_UNKNOWN)──► UNKNOWN ──resolve / late finish──► COMPLETED
                        │                                ▲
                  lease runs out                         │ begin, on_lease_expiry="unknown"
                        ▼                                │
                  LEASE_EXPIRED ─────────────────────────┘
                        └──begin, on_lease_expiry="reexecute"──► IN_FLIGHT (new token, gen + 1)

    forget (operator): any stored state ──► ABSENT

Rule 1: reserving is one atomic read-modify-write of one record; stores run ``begin``
        (and every other step) under their own atomicity (a lock, a transaction, a script).
Rule 2: the fingerprint is checked first: a begin whose fingerprint differs from the
        stored one is ``Mismatch`` whatever the state, and changes nothing.
Rule 3: every reservation carries a fresh, unguessable fencing token (made by the adapter,
        since this module draws no randomness). ``finish`` is accepted only with the
        record's current token, so a late finisher whose lease was taken over can never
        overwrite a newer attempt's result.
Rule 4: a finisher whose lease expired but was not taken over still holds the current
        token: its result is the truth of that execution and is accepted, also from
        ``UNKNOWN`` (it resolves the unknown outcome).
Rule 5: ``UNKNOWN`` is left only by an operator (``resolve``, ``forget``), a late finisher
        with the current token, or the TTL; a begin never executes it again.
Rule 6: every step is a total function of (record, now, inputs): ``TRANSITIONS`` lists
        every (state, step) pair, and refused steps leave the record unchanged.
Rule 7: a store key made by ``scoped_key`` names its *owner* (a tag of the principal, or
        of whoever the caller says counts for it; ``key_owner``). A begin that would
        create a record (its key is ``ABSENT``) and carries a quota is decided on the
        owner's ``Usage``, which the store reads in the same atomic step: when the owner
        already holds ``max_unknown`` live records of unknown outcome, or ``max_records``
        live records in all, it is ``OverQuota`` and changes nothing. Take-overs, replays
        and conflicts concern a record the owner already holds and are never refused;
        expired records count for nothing.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal, NamedTuple

__all__ = [
    "TRANSITIONS",
    "Begin",
    "Decision",
    "InProgress",
    "Mismatch",
    "NotStored",
    "Outcome",
    "OverQuota",
    "Record",
    "Replay",
    "Reserved",
    "Ruling",
    "State",
    "Step",
    "StoredResponse",
    "Unknown",
    "Usage",
    "begin",
    "charges_quota",
    "classify",
    "finish",
    "forget",
    "key_owner",
    "resolve",
    "scoped_key",
]


class State(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    ABSENT = "absent"
    IN_FLIGHT = "in_flight"
    LEASE_EXPIRED = "lease_expired"
    COMPLETED = "completed"
    UNKNOWN = "unknown"


class Step(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    BEGIN_REEXECUTE = "begin_reexecute"  # a request arrives; on_lease_expiry="reexecute"
    BEGIN_UNKNOWN = "begin_unknown"  # a request arrives; on_lease_expiry="unknown"
    COMPLETE = "complete"  # the holder finished; keep its response for replay
    RELEASE = "release"  # the holder finished without doing work; let a retry run
    MARK_UNKNOWN = "mark_unknown"  # the holder finished; the work may or may not have happened
    RESOLVE = "resolve"  # an operator supplies the outcome
    FORGET = "forget"  # an operator deletes the record


class Ruling(enum.Enum):
    """What ``TRANSITIONS`` rules for a step, which ``begin``, ``finish`` and the rest act on."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    RESERVE = "reserve"
    TAKE_OVER = "take_over"
    IN_PROGRESS = "in_progress"
    REPLAY = "replay"
    REPORT_UNKNOWN = "report_unknown"
    EXPIRE_TO_UNKNOWN = "expire_to_unknown"
    ACCEPT = "accept"
    REFUSE = "refuse"


_S, _R = State, Ruling
_BEGIN_SAME = {
    _S.ABSENT: (_S.IN_FLIGHT, _R.RESERVE),
    _S.IN_FLIGHT: (_S.IN_FLIGHT, _R.IN_PROGRESS),
    _S.COMPLETED: (_S.COMPLETED, _R.REPLAY),
    _S.UNKNOWN: (_S.UNKNOWN, _R.REPORT_UNKNOWN),
}
#: States a holder with the current token may settle from (Rule 4).
_FINISHABLE = frozenset({_S.IN_FLIGHT, _S.LEASE_EXPIRED, _S.UNKNOWN})
_FINISH_TARGET = {
    Step.COMPLETE: _S.COMPLETED,
    Step.RELEASE: _S.ABSENT,
    Step.MARK_UNKNOWN: _S.UNKNOWN,
}


def _table() -> dict[tuple[State, Step], tuple[State, Ruling]]:
    table: dict[tuple[State, Step], tuple[State, Ruling]] = {}
    for state, outcome in _BEGIN_SAME.items():
        table[state, Step.BEGIN_REEXECUTE] = outcome
        table[state, Step.BEGIN_UNKNOWN] = outcome
    table[_S.LEASE_EXPIRED, Step.BEGIN_REEXECUTE] = (_S.IN_FLIGHT, _R.TAKE_OVER)
    table[_S.LEASE_EXPIRED, Step.BEGIN_UNKNOWN] = (_S.UNKNOWN, _R.EXPIRE_TO_UNKNOWN)
    for state in State:
        for step, target in _FINISH_TARGET.items():
            table[state, step] = (target, _R.ACCEPT) if state in _FINISHABLE else (state, _R.REFUSE)
    for state in State:
        # An operator may resolve what no live worker holds, and forget anything stored.
        resolvable = state in (_S.LEASE_EXPIRED, _S.UNKNOWN)
        table[state, Step.RESOLVE] = (_S.COMPLETED, _R.ACCEPT) if resolvable else (state, _R.REFUSE)
        table[state, Step.FORGET] = (
            (_S.ABSENT, _R.ACCEPT) if state is not _S.ABSENT else (state, _R.REFUSE)
        )
    return table


#: Every (observed state, step) pair and its (next state, ruling). Total by construction.
TRANSITIONS: dict[tuple[State, Step], tuple[State, Ruling]] = _table()


# Values a store keeps or is handed are named tuples: immutable like frozen dataclasses,
# and several times cheaper to build on the per-request path.


class StoredResponse(NamedTuple):
    """A response kept for replay. ``body`` is None when it was too large to keep."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None


class Record(NamedTuple):
    """What a store keeps under one scoped key."""

    state: State  # IN_FLIGHT, COMPLETED or UNKNOWN
    fingerprint: str
    token: str
    generation: int
    lease_expires_at: float
    expires_at: float
    ttl: float
    response: StoredResponse | None = None


class Begin(NamedTuple):
    """The inputs of a begin: the request's fingerprint and the route's policy values."""

    fingerprint: str
    token: str  # fresh fencing token, used only if this begin reserves
    lease: float
    ttl: float
    on_lease_expiry: Literal["reexecute", "unknown"]
    max_records: int = 0  # live records the key's owner may hold (Rule 7); 0: no quota
    max_unknown: int = 0  # of them, of unknown outcome; 0: no quota


# Records are built with tuple.__new__, every field given: a named tuple's own __new__ is a
# Python call that costs as much again, twice per request.
_record = partial(tuple.__new__, Record)


class Usage(NamedTuple):
    """What the owner of a key holds at ``now``, as its store counts it (Rule 7)."""

    records: int  # live records, in any state
    unknown: int  # live records in state UNKNOWN
    records_free_at: float  # when the first of the live records expires (inf: none)
    unknown_free_at: float  # when the first of the UNKNOWN ones expires (inf: none)


@dataclass(frozen=True, slots=True)
class Reserved:
    """This request holds the key: execute it, then ``finish`` with ``token``."""

    token: str
    generation: int
    took_over: bool  # a previous holder's lease had expired (on_lease_expiry="reexecute")


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another request holds the key with a live lease."""

    lease_expires_at: float


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used for a different request."""


@dataclass(frozen=True, slots=True)
class Replay:
    """The request completed before: send its response again."""

    response: StoredResponse


@dataclass(frozen=True, slots=True)
class NotStored:
    """The request completed before, but its response was too large to keep."""

    status: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """The outcome of the previous execution is unknown; nothing will run until resolved."""

    lease_expired_now: bool  # this begin observed the expired lease and recorded UNKNOWN


@dataclass(frozen=True, slots=True)
class OverQuota:
    """The key's owner holds as many records as its quota allows; nothing was reserved."""

    kind: Literal["records", "unknown"]  # which quota: all live records, or unknown ones
    limit: int
    retry_after: float  # seconds until the first of the counted records expires


Decision = Reserved | InProgress | Mismatch | Replay | NotStored | Unknown | OverQuota


class Outcome(NamedTuple):
    """How a holder settles its reservation."""

    step: Literal[Step.COMPLETE, Step.RELEASE, Step.MARK_UNKNOWN]
    response: StoredResponse | None = None  # required for COMPLETE


def scoped_key(principal: str, key: str, route: str | None = None, owner: str | None = None) -> str:
    """The store key of a client key: scoped by principal and, optionally, route.

    ``idem:<owner>:<digest>``: the owner is a tag of ``owner`` (default: the principal)
    alone, so that a store can count each owner's records (Rule 7) and a Redis Cluster can
    keep them in one slot; the digest covers principal, route and key. An owner other than
    the principal counts several principals' records together (credentials nobody
    listed, under their address) while their keys stay apart. Hashing keeps store keys short and
    uniform and keeps raw keys of one principal from ever colliding with another's (the
    parts are length-prefixed).
    """
    route = route or ""
    material = f"{len(principal)}:{principal}{len(route)}:{route}{len(key)}:{key}".encode()
    digest = hashlib.blake2b(material, digest_size=20).hexdigest()
    return f"idem:{_owner_tag(principal if owner is None else owner)}:{digest}"


@lru_cache(maxsize=4096)  # the same principals come back: skip a hash per request
def _owner_tag(owner: str) -> str:
    return hashlib.blake2b(owner.encode(), digest_size=10, person=b"surefoot.owner").hexdigest()


_OWNED = re.compile(r"idem:([0-9a-f]{20}):[0-9a-f]{40}")


@lru_cache(maxsize=1024)  # a store asks it of one key several times in one request
def key_owner(key: str) -> str:
    """The owner tag of a store key made by ``scoped_key``; "" for any other key (whose
    records belong to no one and count against no quota)."""
    match = _OWNED.fullmatch(key)
    return match.group(1) if match else ""


def charges_quota(record: Record | None, req: Begin, now: float) -> bool:
    """Whether ``begin`` needs the owner's ``Usage``: the request carries a quota and
    would create a record (Rule 7). The store reads the usage only then."""
    return (req.max_records > 0 or req.max_unknown > 0) and classify(record, now) is State.ABSENT


def classify(record: Record | None, now: float) -> State:
    """The state of ``record`` as observed at ``now``."""
    if record is None or now >= record.expires_at:
        return State.ABSENT
    if record.state is State.IN_FLIGHT and now >= record.lease_expires_at:
        return State.LEASE_EXPIRED
    return record.state


def begin(
    record: Record | None, req: Begin, now: float, usage: Usage | None = None
) -> tuple[Decision, Record | None]:
    """A request with this key arrives: decide, and return the record to store.

    ``usage`` is what the key's owner holds, read by the store when ``charges_quota``
    says so (None: the key has no owner, or the request no quota).
    """
    state = classify(record, now)
    if state is not State.ABSENT:
        assert record is not None
        if record.fingerprint != req.fingerprint:
            return Mismatch(), record
    step = Step.BEGIN_REEXECUTE if req.on_lease_expiry == "reexecute" else Step.BEGIN_UNKNOWN
    _, ruling = TRANSITIONS[state, step]
    if ruling is Ruling.RESERVE and usage is not None:
        refused = _over_quota(req, usage, now)
        if refused is not None:
            return refused, record
    if ruling in (Ruling.RESERVE, Ruling.TAKE_OVER):
        generation = (
            record.generation + 1 if record is not None and state is not State.ABSENT else 1
        )
        new = _record(
            (
                State.IN_FLIGHT,  # state
                req.fingerprint,
                req.token,
                generation,
                now + req.lease,  # lease_expires_at
                now + req.ttl,  # expires_at
                req.ttl,
                None,  # response
            )
        )
        return Reserved(req.token, generation, ruling is Ruling.TAKE_OVER), new
    assert record is not None
    if ruling is Ruling.IN_PROGRESS:
        return InProgress(record.lease_expires_at), record
    if ruling is Ruling.REPLAY:
        assert record.response is not None
        if record.response.body is None:
            return NotStored(record.response.status), record
        return Replay(record.response), record
    if ruling is Ruling.EXPIRE_TO_UNKNOWN:
        return Unknown(lease_expired_now=True), record._replace(state=State.UNKNOWN)
    return Unknown(lease_expired_now=False), record


def _over_quota(req: Begin, usage: Usage, now: float) -> OverQuota | None:
    """Rule 7: the quota this new record would exceed (unknown outcomes first: they are
    the ones an operator must settle), or None."""
    if req.max_unknown and usage.unknown >= req.max_unknown:
        return OverQuota("unknown", req.max_unknown, max(usage.unknown_free_at - now, 0.0))
    if req.max_records and usage.records >= req.max_records:
        return OverQuota("records", req.max_records, max(usage.records_free_at - now, 0.0))
    return None


def finish(
    record: Record | None, token: str, outcome: Outcome, now: float
) -> tuple[bool, Record | None]:
    """The holder of ``token`` settles. Returns (accepted, record to store)."""
    state = classify(record, now)
    if record is None or state is State.ABSENT or record.token != token:
        return False, record if state is not State.ABSENT else None
    target, ruling = TRANSITIONS[state, outcome.step]
    if ruling is Ruling.REFUSE:
        return False, record
    return True, _settled(record, target, outcome.response, now)


def resolve(
    record: Record | None, response: StoredResponse, now: float
) -> tuple[bool, Record | None]:
    """An operator supplies the outcome of an unknown (or abandoned) execution."""
    state = classify(record, now)
    target, ruling = TRANSITIONS[state, Step.RESOLVE]
    if ruling is Ruling.REFUSE:
        return False, record if state is not State.ABSENT else None
    assert record is not None
    return True, _settled(record, target, response, now)


def forget(record: Record | None, now: float) -> tuple[bool, Record | None]:
    """An operator deletes the record so the next request executes."""
    state = classify(record, now)
    _, ruling = TRANSITIONS[state, Step.FORGET]
    return ruling is Ruling.ACCEPT, None


def _settled(
    record: Record, target: State, response: StoredResponse | None, now: float
) -> Record | None:
    if target is State.ABSENT:
        return None
    if target is State.COMPLETED and response is None:
        raise ValueError("completing a record needs the response to keep")
    # Built field by field: dataclasses.replace costs several microseconds per request.
    return _record(
        (
            target,
            record.fingerprint,
            record.token,
            record.generation,
            record.lease_expires_at,
            now + record.ttl,
            record.ttl,
            response,
        )
    )
