"""``parse_json_body``: a request body read as JSON, the same way wherever it is read.

The idempotency fingerprint and the gateway's lookup templates (``{body.x}``) both read the
body through it. JSON numbers compare by value (``1.0`` is read as ``1``); a body that is
not JSON, or not declared as JSON, is ``NOT_JSON``.
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any

__all__ = ["NOT_JSON", "parse_json_body"]

#: Marker for a body that is not JSON (or was not declared as JSON).
NOT_JSON: Any = object()

_MAX_SAFE_INT = 2**53


def parse_json_body(body: bytes, content_type: bytes | None) -> Any:
    """The decoded JSON body, or ``NOT_JSON``.

    A body is read as JSON when its content type says JSON (``application/json``,
    ``application/*+json``) or when no content type is given.
    """
    if not body:
        return NOT_JSON
    if content_type is not None and b"json" not in content_type.lower():
        return NOT_JSON
    try:
        text = body.decode()
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _scan(text, start)
    except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError is a ValueError
        return NOT_JSON
    if text[end:].strip(_WHITESPACE):
        return NOT_JSON  # trailing garbage
    return value


def _number(text: str) -> float | int:
    """JSON numbers compare by value: ``1.0`` is read as ``1``."""
    value = float(text)
    if value.is_integer() and abs(value) < _MAX_SAFE_INT:
        return int(value)
    return value


# Built once and called directly: json.loads with options builds a new decoder on every
# call, and its Python wrapper costs more than the C scanning for small bodies.
_WHITESPACE = " \t\n\r"
_scan: Any = json.scanner.make_scanner(json.JSONDecoder(parse_float=_number))  # type: ignore[arg-type]
