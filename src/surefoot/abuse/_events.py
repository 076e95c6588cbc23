"""Events of abuse protection: what the abuse log writes, and what the metrics count.

Subjects in these events are shown as the gateway's ``[abuse] addresses`` setting says
(``full``, ``truncate`` or ``hash``); accounts are always hashed and principals are
hashes already, so no event carries a credential or a login name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "AbuseEvent",
    "AbuseRefused",
    "AnomalyEnded",
    "AnomalyStarted",
    "EntryAdded",
    "EntryRemoved",
    "FailuresCrossed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class AbuseEvent(Event):
    name: ClassVar[str] = "abuse.event"


@dataclass(frozen=True, kw_only=True, slots=True)
class EntryAdded(AbuseEvent):
    """A ban, allow, temporary limit or challenge was put in force.

    ``source`` is ``admin``, ``config``, ``failures:<rule>`` or ``anomaly``; ``offence`` the
    how-manieth ban of the subject; ``duration`` its length in seconds (``inf``: none);
    ``by`` who asked (the admin API's caller, the CLI's user), ``""`` for the gateway.
    """

    name: ClassVar[str] = "abuse.added"
    level: ClassVar[int] = logging.WARNING
    action: str
    kind: str
    subject: str
    until: float
    duration: float
    reason: str
    source: str
    offence: int = 1
    rate: float = 0.0
    by: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class EntryRemoved(AbuseEvent):
    """A ban, allow, limit or challenge was lifted before its expiry."""

    name: ClassVar[str] = "abuse.removed"
    level: ClassVar[int] = logging.WARNING
    action: str
    kind: str
    subject: str
    reason: str
    by: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class FailuresCrossed(AbuseEvent):
    """A subject's failures crossed a rule's threshold (``step="ban"``) or its
    ``challenge_after`` (``step="challenge"``): ``count`` failures in ``window`` seconds,
    the last one from ``address`` on ``route``."""

    name: ClassVar[str] = "abuse.threshold"
    level: ClassVar[int] = logging.WARNING
    rule: str
    kind: str
    subject: str
    step: str
    count: int
    threshold: int
    window: float
    address: str
    route: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AnomalyStarted(AbuseEvent):
    """A client's request rate (``rate``, per second over ``window``) stayed above
    ``factor`` times its usual rate (``baseline``) since ``since``; ``action`` is what the
    gateway did: ``report``, ``tighten`` or ``challenge``."""

    name: ClassVar[str] = "abuse.anomaly_started"
    level: ClassVar[int] = logging.WARNING
    client: str
    rate: float
    baseline: float
    factor: float
    window: float
    since: float
    action: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AnomalyEnded(AbuseEvent):
    """A client's rate came back under ``factor`` times its usual rate (or the new level
    was learned); it had been anomalous since ``since``."""

    name: ClassVar[str] = "abuse.anomaly_ended"
    level: ClassVar[int] = logging.INFO
    client: str
    rate: float
    baseline: float
    since: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AbuseRefused(AbuseEvent):
    """A request was refused by a ban (``access_denied``), held to a temporary limit or
    sent to the challenge (one per request: DEBUG, counted by the metrics)."""

    name: ClassVar[str] = "abuse.refused"
    level: ClassVar[int] = logging.DEBUG
    action: str
    kind: str
    source: str
