"""Instrumentation: frozen event dataclasses delivered to hooks.

Every decision surefoot takes (a key reserved, a response replayed, a conflict...) is an
``Event`` subclass, created once and handed to each registered ``EventHook``. Hooks are
plain callables; the default, ``LoggingHook``, writes one stdlib ``logging`` record per
event on the ``surefoot.<area>`` logger with the event's fields in ``extra``.

Rule 1: a hook that raises never breaks the request: ``emit`` logs the failure and goes on.
Rule 2: events carry hashed principals only, never a credential.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["Event", "EventHook", "LoggingHook", "emit"]

_log = logging.getLogger("surefoot.events")


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every event: when it happened and for which request."""

    #: Dotted name, stable across releases (``idempotency.replayed``).
    name: ClassVar[str] = "event"
    #: Logging level used by ``LoggingHook``.
    level: ClassVar[int] = logging.INFO

    at: float
    request_id: str

    def fields(self) -> dict[str, Any]:
        """The event's fields as a flat dict (for logs and metrics)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class EventHook(Protocol):
    """Receives every event; must be quick and must not block."""

    def __call__(self, event: Event) -> None: ...


class LoggingHook:
    """Logs each event on ``surefoot.<area>`` (``surefoot.idempotency``...).

    The message is ``name key=value ...``; the same fields are in the record's
    ``extra`` under ``surefoot`` for JSON formatters.
    """

    def __init__(self, *, logger_prefix: str = "surefoot") -> None:
        self._prefix = logger_prefix
        self._loggers: dict[str, logging.Logger] = {}

    def __call__(self, event: Event) -> None:
        area = event.name.split(".", 1)[0]
        logger = self._loggers.get(area)
        if logger is None:
            logger = self._loggers[area] = logging.getLogger(f"{self._prefix}.{area}")
        if not logger.isEnabledFor(event.level):
            return
        fields = event.fields()
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        logger.log(event.level, "%s %s", event.name, text, extra={"surefoot": fields})


def emit(hooks: Sequence[EventHook] | Iterable[EventHook], event: Event) -> None:
    """Deliver ``event`` to every hook; a failing hook is logged and skipped."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _log.exception("event hook %r failed on %s", hook, event.name)
