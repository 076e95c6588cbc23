"""What an operator gives to settle a key by hand (``POST /admin/keys/resolve``,
``surefoot keys resolve``), checked before anything is stored.

Rule 1: nothing invalid is ever stored. A resolved key replays its answer for the rest of
        its lifetime, so a status that is not a final answer, a header value that would
        break the response, or a body that contradicts its content type is refused with
        a ``ValueError`` saying what is expected, and the store is never touched.
Rule 2: a final answer is a status from 200 to 599 (1xx are interim answers; a stored one
        would stand in for the real answer forever). A 204 or 304 has no body and no
        ``Content-Length``; any other answer carries its ``Content-Length``, and its
        ``Content-Type`` when the body is not empty.
Rule 3: a content type is a media type (``type/subtype`` and ``; name=value`` parameters)
        of printable ASCII. Under a JSON one (``application/json``, ``*/*+json``) a body
        that is not empty must be one JSON text (no ``NaN`` or ``Infinity``); an empty
        body is stored without a content type. A body is at most 1 MiB.
Rule 4: a store key is 1 to 1024 printable characters.
"""

from __future__ import annotations

import json
import re

from surefoot._masking import shown
from surefoot.idempotency import StoredResponse

__all__ = ["MAX_BODY", "operator_response", "operator_store_key", "refuse_constant"]

#: The largest body an operator may store (Rule 3).
MAX_BODY = 1024 * 1024

_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an RFC 9110 token
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_MEDIA_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:[ \t]*;[ \t]*{_NAME}=(?:{_NAME}|{_QUOTED}))*")
_NO_BODY = frozenset({204, 304})


def operator_response(status: object, body: bytes, content_type: object) -> StoredResponse:
    """The answer to store for a key, checked (Rules 1-3).

    Example:
        >>> operator_response(201, b'{"id": 7}', "application/json").status
        201

    Raises:
        ValueError: ``status``, ``body`` or ``content_type`` is not valid; the message
            names the field and what is expected.
    """
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise ValueError(
            f"status: expected a final HTTP status from 200 to 599, got {shown(status)}"
        )
    if not isinstance(content_type, str) or not _MEDIA_TYPE.fullmatch(content_type):
        raise ValueError(
            "content_type: expected a media type such as 'application/json' (printable "
            f"ASCII, no line breaks), got {shown(content_type)}"
        )
    if len(body) > MAX_BODY:
        raise ValueError(f"body: expected at most {MAX_BODY} bytes, got {len(body)}")
    if status in _NO_BODY:
        if body:
            raise ValueError(f"body: a {status} answer has no body, got {len(body)} bytes")
        return StoredResponse(status, (), b"")
    if body and _is_json(content_type):
        try:
            json.loads(body, parse_constant=refuse_constant)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise ValueError(
                f"body: expected JSON, as content_type {content_type!r} says ({exc})"
            ) from None
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.insert(0, (b"content-type", content_type.encode("ascii")))
    return StoredResponse(status, tuple(headers), body)


def operator_store_key(value: object) -> str:
    """``value`` if it can name a stored record (Rule 4).

    Raises:
        ValueError: it cannot.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= 1024 or not value.isprintable():
        raise ValueError(f"store_key: expected 1 to 1024 printable characters, got {shown(value)}")
    return value


def _is_json(content_type: str) -> bool:
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json")


def refuse_constant(name: str) -> object:
    """``json.loads``'s ``parse_constant``: ``NaN``, ``Infinity`` and ``-Infinity`` are not
    JSON (RFC 8259), so a text holding one is refused with a ``ValueError`` (Rule 3; the
    admin API reads its request bodies with it too)."""
    raise ValueError(f"{name} is not JSON")
