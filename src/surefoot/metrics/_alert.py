"""``Alert``: one active instance of an alerting rule, as the built-in alerting sees it.

Shared by the rule evaluation (``_rules``) and the notifications (``_notify``). Pure: no
I/O, no clock (every time is passed in, in unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Alert", "Labels", "labels_of"]

#: Label pairs sorted by name: hashable, and the same whatever order they were given in.
Labels = tuple[tuple[str, str], ...]


def labels_of(**pairs: str) -> Labels:
    """``Labels`` from keyword arguments, sorted by name."""
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True, slots=True)
class Alert:
    """One instance of a rule (the rule's name and one group of its labels).

    ``labels`` always hold ``alertname`` and ``severity``, as Prometheus's do;
    ``state`` is ``pending`` while the condition has held for less than the rule's ``for``,
    ``firing`` after; ``active_since`` is when the condition started to hold.
    """

    labels: Labels
    state: Literal["pending", "firing"]
    active_since: float
    value: float
    annotations: tuple[tuple[str, str], ...] = field(default=())

    @property
    def name(self) -> str:
        return dict(self.labels)["alertname"]
