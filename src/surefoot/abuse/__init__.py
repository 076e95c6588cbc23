"""Abuse protection: bans and allows, failure-based bans, anomaly detection, an abuse log.

The cores are pure (``now`` is a parameter): ``BanSet`` (what every request is checked
against, at O(1) cost), ``FailureRule`` (fail2ban's jails per route, with growing bans)
and ``AnomalyDetector`` (a client's rate against its usual rate). ``SharedBans`` keeps
every worker's ``BanSet`` in step through a store, ``AbuseGuard`` is the ASGI adapter,
and ``AbuseLog`` writes the JSON-lines abuse log. ``docs/abuse.md`` is the guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.abuse._anomaly import Anomaly, AnomalyDetector, AnomalySettings
from surefoot.abuse._bans import Action, BanSet, Entry, Kind, network_of, overlaps, subject
from surefoot.abuse._events import (
    AbuseEvent,
    AbuseRefused,
    AnomalyEnded,
    AnomalyStarted,
    EntryAdded,
    EntryRemoved,
    FailuresCrossed,
)
from surefoot.abuse._failures import AccountSource, FailureRule, account_hash, ban_time
from surefoot.abuse._log import AbuseLog, Privacy, shown

if TYPE_CHECKING:
    from surefoot.abuse._shared import SharedBans
    from surefoot.abuse.middleware import AbuseGuard, AnomalyResponse, Challenge
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.abuse._shared": ("SharedBans",),
            "surefoot.abuse.middleware": ("AbuseGuard", "AnomalyResponse", "Challenge"),
        },
    )

__all__ = [
    "AbuseEvent",
    "AbuseGuard",
    "AbuseLog",
    "AbuseRefused",
    "AccountSource",
    "Action",
    "Anomaly",
    "AnomalyDetector",
    "AnomalyEnded",
    "AnomalyResponse",
    "AnomalySettings",
    "AnomalyStarted",
    "BanSet",
    "Challenge",
    "Entry",
    "EntryAdded",
    "EntryRemoved",
    "FailureRule",
    "FailuresCrossed",
    "Kind",
    "Privacy",
    "SharedBans",
    "account_hash",
    "ban_time",
    "network_of",
    "overlaps",
    "shown",
    "subject",
]
