"""Request fingerprints: what makes two requests "the same request".

The fingerprint covers the method, the path with its query string, and the body. A JSON
body is compared semantically: key order, whitespace and ``1`` versus ``1.0`` do not
matter, and the policy's ignored fields (dotted paths such as ``metadata.trace_id``)
are removed first. Any other body is compared by its bytes.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
from typing import Any

from surefoot._json import NOT_JSON

__all__ = ["fingerprint"]

# Built once and called directly: json.dumps with options builds a new encoder on every
# call, and its Python wrapper costs more than the C encoding for small bodies.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode: Any = (
    _c_make_encoder(
        None,  # no circular-reference markers: parsed JSON has no cycles
        None,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,
        ":",
        ",",
        True,  # sort_keys
        False,
        True,
    )
    if _c_make_encoder is not None
    else None
)
_FALLBACK = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> str:
    return "".join(_encode(value, 0)) if _encode is not None else _FALLBACK.encode(value)


def fingerprint(
    method: str,
    target: bytes,
    body: bytes,
    parsed: Any,
    ignore_fields: tuple[tuple[str, ...], ...] = (),
) -> str:
    """A hex digest identifying the request (``target`` is the path plus ``?query``)."""
    head = method.upper().encode() + b"\x00" + target + b"\x00"
    if parsed is NOT_JSON:
        return hashlib.sha256(head + b"raw\x00" + body).hexdigest()
    for path in ignore_fields:
        parsed = _without(parsed, path)
    return hashlib.sha256(head + b"json\x00" + _canonical(parsed).encode()).hexdigest()


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
