"""Events of contract evolution: who still calls a deprecated route, and the pins recorded.

``DeprecatedCalled`` feeds the metrics (``surefoot_deprecated_requests_total``, by route,
client and phase) and the gateway's "who still calls it" list (``[top]``'s ``deprecated``
list, per route). A principal is a hashed credential, a user id or an address: no event
carries a credential.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = ["ContractEvent", "DeprecatedCalled", "VersionPinned"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ContractEvent(Event):
    name: ClassVar[str] = "contracts.event"


@dataclass(frozen=True, kw_only=True, slots=True)
class DeprecatedCalled(ContractEvent):
    """A request reached a route its client has been told is deprecated.

    ``phase`` is ``announced``, ``deprecated``, ``brownout`` or ``retired`` (the last two
    were answered 410); ``client`` the ``[[clients]]`` name, ``""`` for another client.
    """

    name: ClassVar[str] = "contracts.deprecated_called"
    level: ClassVar[int] = logging.DEBUG
    route: str
    principal: str
    client: str
    phase: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionPinned(ContractEvent):
    """A ``[[clients]]`` client seen for the first time was pinned to the version of its
    first request (or to its version in the policy file)."""

    name: ClassVar[str] = "contracts.version_pinned"
    client: str
    version: str
