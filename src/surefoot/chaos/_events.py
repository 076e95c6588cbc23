"""Events of fault injection: one frozen dataclass per injected fault.

Like the client's events, each carries the request id (``X-Request-Id``, else the
idempotency key, else ``"-"``), the method, the host and the path (never the query string).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = ["ChaosEvent", "FaultInjected"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChaosEvent(Event):
    name: ClassVar[str] = "chaos.event"

    method: str
    host: str
    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultInjected(ChaosEvent):
    """Rule ``rule`` applied a fault of kind ``kind`` to this request.

    ``detail`` says how, briefly: the delay (``"0.250s"``), the status (``"503"``), what
    was lost (``"truncate"``), the rate (``"100 B/s"``), ``"concurrent"``...
    """

    name: ClassVar[str] = "chaos.fault_injected"
    level: ClassVar[int] = logging.WARNING
    rule: str
    kind: str
    detail: str
