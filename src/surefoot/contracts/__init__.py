"""Contract evolution: deprecation and sunset, brownouts, date-based versions.

The cores are pure (``now`` is a parameter): ``Lifecycle`` (a route's deprecation, its
sunset and brownout windows, and the RFC 9745 / RFC 8594 headers announcing them) and
``VersionSet`` (Stripe-style versions named by dates, resolved per request).
``VersionPins`` records each client's pin in a store, and ``ContractGuard`` is the ASGI
adapter the gateway puts in front of its rate limiter. ``docs/contracts.md`` is the guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.contracts._events import ContractEvent, DeprecatedCalled, VersionPinned
from surefoot.contracts._lifecycle import (
    Lifecycle,
    Phase,
    Schedule,
    Window,
    deprecation_field,
)
from surefoot.contracts._versions import Resolved, VersionSet

if TYPE_CHECKING:
    from surefoot.contracts._pins import VersionPins
    from surefoot.contracts.middleware import ContractGuard, Versioning
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.contracts._pins": ("VersionPins",),
            "surefoot.contracts.middleware": ("ContractGuard", "Versioning"),
        },
    )

__all__ = [
    "ContractEvent",
    "ContractGuard",
    "DeprecatedCalled",
    "Lifecycle",
    "Phase",
    "Resolved",
    "Schedule",
    "VersionPinned",
    "VersionPins",
    "VersionSet",
    "Versioning",
    "Window",
    "deprecation_field",
]
