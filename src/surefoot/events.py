"""Instrumentation: frozen event dataclasses delivered to hooks.

Every decision surefoot takes (a key reserved, a response replayed, a conflict...) is an
``Event`` subclass, created once and handed to each registered ``EventHook``. Hooks are
plain callables; the default, ``LoggingHook``, writes one stdlib ``logging`` record per
event on the ``surefoot.<area>`` logger with the event's fields in ``extra``.

Rule 1: a hook that raises never breaks the request: ``emit`` logs the failure and goes on.
Rule 2: events carry hashed principals only, never a credential.
Rule 3: ``LoggingHook``'s message is always one line of logfmt, whatever a client sent: a
        value with a character ``str.isprintable`` refuses (control characters, line and
        paragraph separators, bidi and other format characters, non-ASCII spaces) is
        quoted and that character written as its backslash escape (``\\n``, ``\\x1b``,
        ``\\u2028``), so a path with ``%0A`` cannot forge a log line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["Event", "EventHook", "LoggingHook", "emit", "wanted", "wanting"]

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
    """Receives every event; must be quick and must not block.

    A hook may also have ``wants(event_type) -> bool``: when every hook says no, the
    event is never built, which keeps instrumentation free on the hot path (``wanted``,
    or ``wanting`` where the same hooks are asked on every request). surefoot's own
    hooks name it as their base, so a list of them is a ``list[EventHook]`` to the type
    checker; any callable with this signature is a hook too.
    """

    def __call__(self, event: Event, /) -> None: ...


class LoggingHook(EventHook):
    """Logs each event on ``surefoot.<area>`` (``surefoot.idempotency``...).

    The message is ``name key=value ...``; the same fields are in the record's
    ``extra`` under ``surefoot`` for JSON formatters.
    """

    def __init__(self, *, logger_prefix: str = "surefoot") -> None:
        self._prefix = logger_prefix
        self._loggers: dict[str, logging.Logger] = {}
        self._by_type: dict[type[Event], logging.Logger] = {}

    def _logger(self, name: str) -> logging.Logger:
        area = name.split(".", 1)[0]
        logger = self._loggers.get(area)
        if logger is None:
            logger = self._loggers[area] = logging.getLogger(f"{self._prefix}.{area}")
        return logger

    def wants(self, event_type: type[Event]) -> bool:
        """Whether the event's logger is enabled for its level right now."""
        logger = self._by_type.get(event_type)
        if logger is None:
            logger = self._by_type[event_type] = self._logger(event_type.name)
        return logger.isEnabledFor(event_type.level)

    def __call__(self, event: Event) -> None:
        logger = self._logger(event.name)
        if not logger.isEnabledFor(event.level):
            return
        fields = event.fields()
        text = " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items() if v is not None)
        logger.log(event.level, "%s %s", event.name, text, extra={"surefoot": fields})


def _logfmt(value: Any) -> str:
    """A value as logfmt: floats to the millisecond; text with spaces, quotes, backslashes
    or unprintable characters quoted, those escaped (Rule 3)."""
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    return '"' + text + '"'


def _escaped(char: str) -> str:
    """An unprintable character as a Python literal writes it: ``\\n``, ``\\x1b``..."""
    return char.encode("unicode_escape").decode("ascii")


def wanted(hooks: Sequence[EventHook], event_type: type[Event]) -> bool:
    """Whether any hook wants events of ``event_type`` (hooks without ``wants`` want all)."""
    for hook in hooks:
        wants = getattr(hook, "wants", None)
        if wants is None or wants(event_type):
            return True
    return False


def wanting(hooks: Sequence[EventHook]) -> Callable[[type[Event]], bool]:
    """``wanted`` for a fixed sequence of hooks, asked as ``wanting(hooks)(event_type)``.

    Each hook's ``wants`` is looked up once, here: a hot path that asks on every request
    keeps the function (with one hook, it is that hook's own ``wants``).
    """
    wants: list[Callable[[type[Event]], bool]] = []
    for hook in hooks:
        method = getattr(hook, "wants", None)
        if method is None:
            return _always
        wants.append(method)
    if len(wants) == 1:
        return wants[0]
    return lambda event_type: any(w(event_type) for w in wants)


def _always(event_type: type[Event]) -> bool:
    return True


def emit(hooks: Sequence[EventHook] | Iterable[EventHook], event: Event) -> None:
    """Deliver ``event`` to every hook; a failing hook is logged and skipped."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _log.exception("event hook %r failed on %s", hook, event.name)
