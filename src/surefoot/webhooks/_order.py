"""The ordering guard's records as a sans-I/O state machine.

One record per (endpoint, object), under ``ordering_key(endpoint, object_id)``. It keeps
the newest version of the object whose event was processed (``newest``), and who is
processing an event of the object now (``holder``, its version ``holding``, its lease
``until``). A missing or expired record is ``ABSENT``; a stored one is ``HELD`` while a
holder's lease runs, ``FREE`` otherwise (derived from ``now``, never stored)::

    FREE ──claim(v ≥ newest)──► HELD(token, v, until=now+lease)
     │                           │   ├──settle(token, ok)──► FREE, newest = max(newest, v)
     │                           │   └──settle(token, fail)──► FREE, newest unchanged
     │                           └──claim by another token, now < until──► BUSY, unchanged
     └──claim(v < newest)──► STALE, unchanged (from HELD too)

    HELD with now ≥ until is FREE (the holder died; its lease ran out)
    ABSENT (no record, or an expired one) is FREE with newest = None

Rule 1: each ``claim`` and ``settle`` is one atomic read-modify-write of one record; the
        stores run them under their own atomicity (a lock, a transaction, a script).
Rule 2: versions compare as numbers; a version equal to ``newest`` is not stale (a
        sender may send several events for one version). Staleness is checked first: a
        claim older than ``newest`` is ``STALE`` whoever holds the record, since
        ``newest`` never decreases and the event can never become new again.
Rule 3: a claim by another token while the holder's lease runs is ``BUSY``; ``Claim.until``
        is when that lease ends (a ``Retry-After``). A claim by the holder's own token
        renews its lease and takes the claim's version. A claim after the lease ran out
        takes the record over (the holder died).
Rule 4: only ``settle`` raises ``newest``, and only when the work is done (``ok``):
        ``newest = max(newest, version)``, so it never decreases. A settle by the holder
        frees the record (``ok`` or not).
Rule 5: a settle whose token is no longer the holder's (its lease ran out and another
        claimed, or the record expired meanwhile): ``ok`` still raises ``newest`` (its work
        happened) and leaves the holder alone; a failure changes nothing.
Rule 6: a record expires ``retention`` seconds after its last write (a claim or a settle
        that changed it), and never while a holder's lease runs: ``expires = max(now +
        retention, until)``. An expired record reads as ``ABSENT``; stores drop it.
Rule 7: every step is a total function of (record, now, inputs); a step that changes
        nothing returns the very record it was given (stores then write nothing).
"""

from __future__ import annotations

import enum
import hashlib
from typing import NamedTuple

__all__ = [
    "KEY_PREFIX",
    "Claim",
    "OrderRecord",
    "OrderState",
    "Verdict",
    "claim",
    "live_order",
    "order_state",
    "ordering_key",
    "settle",
]

#: What every ordering key starts with (store keys of other kinds never do).
KEY_PREFIX = "whord:"


class OrderRecord(NamedTuple):
    """The stored state of one object's ordering. Times are epoch seconds."""

    newest: float | None  # the newest version processed; None: none yet
    holder: str | None  # the token processing an event now; None: nobody
    holding: float | None  # the holder's version
    until: float  # when the holder's lease ends (meaningless without a holder)
    expires: float  # when the record expires (Rule 6)


class OrderState(enum.Enum):
    """What a record is at an instant (never stored)."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    ABSENT = "absent"
    FREE = "free"
    HELD = "held"


class Verdict(enum.Enum):
    """A claim's answer: process the event, acknowledge it unprocessed, or try later."""

    __hash__ = object.__hash__
    PROCEED = "proceed"
    STALE = "stale"
    BUSY = "busy"


class Claim(NamedTuple):
    """What a claim decided.

    ``newest`` is the newest version processed before the claim (None: none).
    ``until`` is when the lease ends: the claimant's own (``PROCEED``), the holder's
    (``BUSY``: retry after it), the record's last (``STALE``).
    """

    verdict: Verdict
    newest: float | None
    until: float


def order_state(record: OrderRecord | None, now: float) -> OrderState:
    """The state ``record`` is in at ``now``."""
    if record is None or now >= record.expires:
        return OrderState.ABSENT
    if record.holder is not None and now < record.until:
        return OrderState.HELD
    return OrderState.FREE


def claim(
    record: OrderRecord | None,
    *,
    version: float,
    token: str,
    now: float,
    lease: float,
    retention: float,
) -> tuple[OrderRecord, Claim]:
    """Claim the object for an event of ``version``; the record to store and the answer."""
    state = order_state(record, now)
    newest = None
    if state is not OrderState.ABSENT:
        assert record is not None
        newest = record.newest
        if newest is not None and version < newest:
            return record, Claim(Verdict.STALE, newest, record.until)
        if state is OrderState.HELD and record.holder != token:
            return record, Claim(Verdict.BUSY, newest, record.until)
    until = now + lease
    new = OrderRecord(newest, token, version, until, max(now + retention, until))
    return new, Claim(Verdict.PROCEED, newest, until)


def settle(
    record: OrderRecord | None,
    *,
    token: str,
    version: float,
    ok: bool,
    now: float,
    retention: float,
) -> OrderRecord | None:
    """The holder of ``token`` is done with its event of ``version`` (``ok``: processed)."""
    if order_state(record, now) is OrderState.ABSENT:
        if not ok:
            return record
        # The record expired while the event was processed (Rule 5): its work counts.
        return OrderRecord(version, None, None, now, now + retention)
    assert record is not None
    newest = record.newest
    if ok and (newest is None or version > newest):
        newest = version
    if record.holder == token:
        return OrderRecord(newest, None, None, now, now + retention)
    if newest == record.newest:
        return record  # fenced out and nothing to add (Rule 5)
    return record._replace(newest=newest, expires=max(now + retention, record.until))


def live_order(record: OrderRecord | None, now: float) -> OrderRecord | None:
    """``record`` as a store answers ``order_get`` at ``now``: None once it has expired."""
    return None if order_state(record, now) is OrderState.ABSENT else record


def ordering_key(endpoint: str, object_id: str) -> str:
    """The store key of ``object_id``'s ordering at ``endpoint``: bounded, never the raw id.

    Example:
        >>> ordering_key("stripe", "cus_123")
        'whord:...'  # 40 hex digits
    """
    where = endpoint.encode("utf-8", "surrogatepass")
    what = object_id.encode("utf-8", "surrogatepass")
    # The endpoint's length first: ("ab", "c") and ("a", "bc") are different objects.
    digest = hashlib.blake2b(b"%d:%b%b" % (len(where), where, what), digest_size=20)
    return KEY_PREFIX + digest.hexdigest()
