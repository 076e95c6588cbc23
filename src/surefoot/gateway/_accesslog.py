"""Structured logs: one JSON object per line, for access logs and for every other record.

``AccessLog.log`` writes one INFO record per request on the ``surefoot.gateway.access``
logger. Its message *is* the JSON line, so a plain ``%(message)s`` handler prints one
JSON object per request::

    {"ts":"2024-05-01T12:00:00.123Z","request_id":"r-1","method":"POST","path":"/orders",
     "route":"/orders","status":201,"duration_ms":12.5,"client":"10.0.0.7",
     "principal":"k:3f2a...","upstream_status":201,"bytes":512,"replayed":false}

(on one line). ``JsonFormatter`` renders any record as one JSON line
(``ts``, ``level``, ``logger``, ``message``, then ``surefoot``: the event fields that
``surefoot.events.LoggingHook`` puts in ``extra``, and ``exc`` for a traceback); an access
record comes out as its own fields with ``level`` and ``logger`` added, not as a JSON
string inside ``message``.

Rule 1: ``ts`` is ISO 8601 in UTC with milliseconds and a ``Z``; durations are
        milliseconds with three decimals.
Rule 2: nothing secret is logged: ``path`` is the path without its query string and
        ``principal`` the hashed principal (as in events), never a credential.
Rule 3: every line is valid JSON: values JSON cannot hold are written as their ``str``,
        and infinities or NaN as strings.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from surefoot.clock import Clock, SystemClock

__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "access_record", "iso_timestamp"]

#: The logger access records are written on.
ACCESS_LOGGER = "surefoot.gateway.access"
#: The LogRecord attribute that holds an access record's fields (for ``JsonFormatter``).
_ACCESS_ATTR = "surefoot_access"


def iso_timestamp(at: float) -> str:
    """Epoch seconds as ISO 8601 in UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def access_record(
    *,
    at: float,
    request_id: str,
    method: str,
    path: str,
    route: str | None,
    status: int,
    duration: float,
    client: str | None = None,
    principal: str | None = None,
    upstream_status: int | None = None,
    bytes_sent: int = 0,
    replayed: bool = False,
) -> dict[str, Any]:
    """The fields of one access log line, in their order.

    Example:
        >>> access_record(at=0.0, request_id="r-1", method="GET", path="/a", route="/a",
        ...               status=200, duration=0.0125)["duration_ms"]
        12.5

    Args:
        at: when the response ended (epoch seconds).
        request_id: the request's id (as in its events).
        method, path: the request's method and path (without the query string).
        route: the matched route template, or ``None``.
        status: the status sent to the client.
        duration: seconds from the request's arrival to the end of its response.
        client: the client's address.
        principal: the hashed principal, never a credential.
        upstream_status: the upstream's status, or ``None`` when it was not called or did
            not answer (a replay, a 429, a shed request, a timeout).
        bytes_sent: bytes of response body sent.
        replayed: True when the response was an idempotent replay.
    """
    return {
        "ts": iso_timestamp(at),
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "client": client,
        "principal": principal,
        "upstream_status": upstream_status,
        "bytes": bytes_sent,
        "replayed": replayed,
    }


class AccessLog:
    """Writes one JSON access line per request on ``surefoot.gateway.access`` at INFO.

    Example:
        >>> access = AccessLog()
        >>> access.log(request_id="r-1", method="GET", path="/orders/7",
        ...            route="/orders/{id}", status=200, duration=0.012)

    Args:
        logger: where to write (default: the ``surefoot.gateway.access`` logger).
        clock: the time written in ``ts`` (default: the system clock).
    """

    def __init__(self, *, logger: logging.Logger | None = None, clock: Clock | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self.clock = clock if clock is not None else SystemClock()

    @property
    def enabled(self) -> bool:
        """Whether a line would be written now (lets callers skip gathering the fields)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        route: str | None,
        status: int,
        duration: float,
        client: str | None = None,
        principal: str | None = None,
        upstream_status: int | None = None,
        bytes_sent: int = 0,
        replayed: bool = False,
    ) -> None:
        """Write the line of one finished request (see ``access_record`` for the fields)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        record = access_record(
            at=self.clock.now(),
            request_id=request_id,
            method=method,
            path=path,
            route=route,
            status=status,
            duration=duration,
            client=client,
            principal=principal,
            upstream_status=upstream_status,
            bytes_sent=bytes_sent,
            replayed=replayed,
        )
        # The line has no arguments, so logging never %-formats it: a "%" in a path is safe.
        self.logger.info(_dumps(record), extra={_ACCESS_ATTR: record})

    def __repr__(self) -> str:
        return f"AccessLog(logger={self.logger.name!r})"


class JsonFormatter(logging.Formatter):
    """Renders any log record as one JSON line.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.setFormatter(JsonFormatter())
        >>> logging.getLogger("surefoot").addHandler(handler)

    Keys: ``ts``, ``level``, ``logger``, ``message``; ``surefoot`` (the event fields a
    ``LoggingHook`` record carries), ``exc`` and ``stack`` when present. An access record
    gives its own fields with ``level`` and ``logger`` after ``ts``.
    """

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, _ACCESS_ATTR, None)
        if isinstance(access, dict):
            head = {"ts": access.get("ts"), "level": record.levelname, "logger": record.name}
            return _dumps(head | access)
        out: dict[str, Any] = {
            "ts": iso_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "surefoot", None)
        if isinstance(fields, dict):
            out["surefoot"] = fields
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _dumps(out)


def _dumps(value: dict[str, Any]) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:  # an infinity or a NaN somewhere (Rule 3): rare, so checked late
        return json.dumps(_finite(value), separators=(",", ":"), default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
