"""Request fingerprints: what makes two requests "the same request".

The fingerprint covers the method, the path with its query string, and the body. A JSON
body is compared semantically: key order, whitespace and ``1`` versus ``1.0`` do not
matter, and the policy's ignored fields (dotted paths such as ``metadata.trace_id``)
are removed first. Any other body is compared by its bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["NOT_JSON", "fingerprint", "parse_json_body"]

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
        return json.loads(body)
    except (ValueError, RecursionError):
        return NOT_JSON


def fingerprint(
    method: str,
    target: bytes,
    body: bytes,
    parsed: Any,
    ignore_fields: tuple[tuple[str, ...], ...] = (),
) -> str:
    """A hex digest identifying the request (``target`` is the path plus ``?query``)."""
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\x00")
    h.update(target)
    h.update(b"\x00")
    if parsed is NOT_JSON:
        h.update(b"raw\x00")
        h.update(body)
    else:
        for path in ignore_fields:
            parsed = _without(parsed, path)
        canonical = json.dumps(
            _normalize(parsed), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        h.update(b"json\x00")
        h.update(canonical.encode())
    return h.hexdigest()


def _normalize(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _without(value: Any, path: tuple[str, ...]) -> Any:
    """A copy of ``value`` with the field at ``path`` removed (missing paths are fine)."""
    if not isinstance(value, dict) or not path:
        return value
    head, rest = path[0], path[1:]
    if head not in value:
        return value
    copy = dict(value)
    if rest:
        copy[head] = _without(copy[head], rest)
    else:
        del copy[head]
    return copy
