"""One request against several limits, decided all or nothing (sans-I/O).

A request usually meets several limits at once: 10/second and 1000/hour of one policy,
the limits of other policies, a concurrency limit. ``plan`` decides them together from
their current states:

Rule 1: the request is admitted when every *enforced* item allows it; shadow items are
        decided and reported but never refuse.
Rule 2: an admitted request commits the new state of every item that allowed it; a shadow
        item that would have refused commits nothing (what would have happened, had it
        been enforced). A refused request commits nothing at all, so a limit that said yes
        is not charged for a request another limit turned away.
Rule 3: stores run ``plan`` atomically over all the items' keys (one transaction, one Lua
        script), so N processes sharing a store never admit more than one process would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from surefoot.ratelimit._algorithms import (
    ALGORITHM_BY_NAME,
    Concurrency,
    CounterState,
    RateLimitDecision,
)
from surefoot.ratelimit._limit import Limit

__all__ = ["Item", "Write", "plan"]


class Item(NamedTuple):
    """One limit to check for one request, under its store key."""

    key: str
    algorithm: str
    limit: Limit
    cost: int = 1
    enforce: bool = True
    #: ``concurrency`` only: the token the slot is held under (released with it).
    token: str = ""


class Write(NamedTuple):
    """A state to store (``None``: delete) and when the store may forget it."""

    key: str
    state: CounterState
    expires_at: float


def plan(
    states: Sequence[CounterState], items: Sequence[Item], now: float
) -> tuple[bool, list[RateLimitDecision], list[Write]]:
    """Decide ``items`` (with their current ``states``): (admitted, decisions, writes)."""
    decisions: list[RateLimitDecision] = []
    new_states: list[CounterState] = []
    admitted = True
    for state, item in zip(states, items, strict=True):
        algorithm = ALGORITHM_BY_NAME[item.algorithm]
        if algorithm is Concurrency:
            decision, new = Concurrency.decide(state, now, item.cost, item.limit, item.token)
        else:
            decision, new = algorithm.decide(state, now, item.cost, item.limit)
        decisions.append(decision)
        new_states.append(new)
        if item.enforce and not decision.allowed:
            admitted = False
    writes: list[Write] = []
    if admitted:
        for item, decision, new in zip(items, decisions, new_states, strict=True):
            if decision.allowed:
                algorithm = ALGORITHM_BY_NAME[item.algorithm]
                writes.append(Write(item.key, new, algorithm.expires_at(new, item.limit)))
    return admitted, decisions, writes
