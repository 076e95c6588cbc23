"""Where a webhook's event id and ordering fields are read, and the bounds they must meet.

Rule 1: an event id is 1 to 255 printable ASCII characters, the rule of an idempotency
        key (it becomes one); anything else is ``WebhookEventIdInvalid``, which names where
        the id was read and never quotes it.
Rule 2: the body is parsed as JSON at most once, and only when a field is read from it; a
        body that is not a JSON object then is ``WebhookBodyNotJson``.
Rule 3: a field path is dotted (``data.object.id``) and walks JSON objects only.
Rule 4: an ordering object id is a string of 1 to 255 characters or an integer; a version
        is a finite JSON number (not a boolean) or an RFC 3339 timestamp with its offset,
        compared as seconds since the epoch. Anything else is ``WebhookEventFieldInvalid``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from dataclasses import field as _field
from datetime import datetime
from typing import Any

from surefoot.errors import (
    ConfigurationError,
    WebhookBodyNotJson,
    WebhookEventFieldInvalid,
    WebhookEventIdInvalid,
)

__all__ = ["Body", "EventId", "Ordering", "is_event_id", "read_event_id", "read_ordering"]

_EVENT_ID = re.compile(r"[\x21-\x7e]{1,255}")
_PATH = re.compile(r"[A-Za-z0-9_$-]{1,64}(?:\.[A-Za-z0-9_$-]{1,64}){0,15}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")
_MAX_OBJECT_ID = 255
_NOT_PARSED: Any = object()


def _check_path(owner: str, name: str, value: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise ConfigurationError(
            f"{owner}.{name}: expected a dotted JSON field path such as 'data.object.id', "
            f"got {value!r}"
        )
    return tuple(value.split("."))


@dataclass(frozen=True, kw_only=True)
class EventId:
    """Where an endpoint reads its events' ids: one header, or one body field.

    Example:
        >>> EventId(header="x-delivery-id")
        >>> EventId(field="data.id")
    """

    header: str | None = None
    field: str | None = None
    path: tuple[str, ...] = _field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.header is None) == (self.field is None):
            raise ConfigurationError("EventId: expected exactly one of header and field")
        if self.header is not None:
            object.__setattr__(self, "header", self.header.lower())
            if not _HEADER.fullmatch(self.header.lower()):
                raise ConfigurationError(
                    f"EventId.header: expected an HTTP header name, got {self.header!r}"
                )
            object.__setattr__(self, "path", ())
        else:
            object.__setattr__(self, "path", _check_path("EventId", "field", str(self.field)))

    @property
    def source(self) -> str:
        """Where the id is read, as a problem names it."""
        return f"header {self.header}" if self.header else f"body field {self.field}"


@dataclass(frozen=True, kw_only=True)
class Ordering:
    """The per-object ordering guard of an endpoint: which object an event is about and
    which version of it the event carries.

    An event whose version is older than the newest one already processed for its object
    is acknowledged (2xx) but not handed to the application; events about one object are
    handled one at a time (a second one meanwhile gets 409 ``webhook_object_busy``).

    Args:
        object_field: the body field naming the object (``data.object.id``).
        version_field: the body field giving its version: a number (a sequence, a
            ``created`` time) or an RFC 3339 timestamp (``updated_at``).
        lease: seconds an event's processing holds its object before it counts as
            abandoned (the worker died) and another event may take it.
    """

    object_field: str
    version_field: str
    lease: float = 30.0
    object_path: tuple[str, ...] = _field(init=False, repr=False, compare=False)
    version_path: tuple[str, ...] = _field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "object_path", _check_path("Ordering", "object_field", self.object_field)
        )
        object.__setattr__(
            self, "version_path", _check_path("Ordering", "version_field", self.version_field)
        )
        if not 0 < self.lease <= 3600:
            raise ConfigurationError(
                f"Ordering.lease: expected seconds above 0 and at most 3600, got {self.lease!r}"
            )


class Body:
    """A webhook body, parsed as JSON on first use only (Rule 2)."""

    __slots__ = ("_parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: Any = _NOT_PARSED

    def lookup(self, path: tuple[str, ...], name: str) -> Any:
        """The value at ``path``, or None where the path leads nowhere (Rule 3).

        Raises:
            WebhookBodyNotJson: the body is not a JSON object (``name`` says what was read).
        """
        if self._parsed is _NOT_PARSED:
            try:
                self._parsed = json.loads(self.raw)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                self._parsed = None
        value = self._parsed
        if not isinstance(value, dict):
            raise WebhookBodyNotJson(field=name)
        for part in path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value


def is_event_id(text: str) -> bool:
    """Whether ``text`` is within an event id's bounds (Rule 1)."""
    return _EVENT_ID.fullmatch(text) is not None


def read_event_id(
    headers: dict[str, str],
    body: Body,
    source: EventId | None,
    header_id: str | None,
    field: str | None,
) -> str:
    """The event's id: from ``source`` when the endpoint names one, else the id the
    signature scheme read from the headers (``header_id``), else the scheme's body field.

    Raises:
        WebhookEventIdInvalid: missing or out of bounds (Rule 1).
        WebhookBodyNotJson: the id is in a body that is not a JSON object.
    """
    if source is not None:
        where = source.source
        value: Any = (
            headers.get(source.header) if source.header else body.lookup(source.path, where)
        )
    elif header_id is not None:
        where, value = "signature headers", header_id
    elif field is not None:
        where = f"body field {field}"
        value = body.lookup(tuple(field.split(".")), where)
    else:  # the scheme's id header is absent (WebhookEndpoint checks that one exists)
        where, value = "signature headers", None
    if value is None or value == "":
        raise WebhookEventIdInvalid(source=where, reason="missing")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise WebhookEventIdInvalid(source=where, reason="not a string")
    if not is_event_id(value):
        reason = "longer than 255 characters" if len(value) > 255 else "not printable ASCII"
        raise WebhookEventIdInvalid(source=where, reason=reason)
    return value


def read_ordering(ordering: Ordering, body: Body) -> tuple[str, float]:
    """The object an event is about and the version it carries (Rule 4).

    Raises:
        WebhookEventFieldInvalid: a field is missing or of the wrong type.
        WebhookBodyNotJson: the body is not a JSON object.
    """
    name = ordering.object_field
    obj = body.lookup(ordering.object_path, name)
    if isinstance(obj, int) and not isinstance(obj, bool):
        obj = str(obj)
    if not isinstance(obj, str) or not 0 < len(obj) <= _MAX_OBJECT_ID:
        raise WebhookEventFieldInvalid(
            field=name,
            reason="missing" if obj is None else "not usable",
            expected="a string of 1 to 255 characters or an integer",
        )
    name = ordering.version_field
    raw = body.lookup(ordering.version_path, name)
    version = _version(raw)
    if version is None:
        raise WebhookEventFieldInvalid(
            field=name,
            reason="missing" if raw is None else "not usable",
            expected="a finite number or an RFC 3339 timestamp with its offset",
        )
    return obj, version


def _version(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
        return value if math.isfinite(value) else None
    if isinstance(raw, str) and 0 < len(raw) <= 64:
        try:
            stamp = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if stamp.tzinfo is None:
            return None
        return stamp.timestamp()
    return None
