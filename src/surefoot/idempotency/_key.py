"""Reading the Idempotency-Key from a request.

The header value is either a raw token (``Idempotency-Key: 8e03978e-40d5``) or an RFC 8941
structured-field string (``Idempotency-Key: "8e03978e-40d5"``), as the IETF draft defines
it. A key is 1 to 255 characters of printable ASCII; anything else is refused with the
reason, so the client learns what to fix.
"""

from __future__ import annotations

import re

__all__ = ["MAX_KEY_LENGTH", "InvalidKey", "parse_key"]

MAX_KEY_LENGTH = 255


class InvalidKey(ValueError):
    """The key is malformed; ``reason`` is a short phrase for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_PLAIN = re.compile(rb"[\x21-\x7e]{1,255}")


def parse_key(values: list[bytes]) -> str | None:
    """The key carried by the header ``values`` (all occurrences), or None if absent."""
    if not values:
        return None
    if len(values) == 1 and values[0][:1] != b'"' and _PLAIN.fullmatch(values[0]):
        return values[0].decode("ascii")  # the common case: one plain token
    keys = {_parse_one(v) for v in values}
    if len(keys) > 1:
        raise InvalidKey("it was sent more than once with different values")
    return keys.pop()


def _parse_one(raw: bytes) -> str:
    text = raw.decode("latin-1").strip(" \t")
    if text.startswith('"'):
        text = _unquote(text)
    elif any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise InvalidKey("it contains whitespace or a non-printable character")
    if not text:
        raise InvalidKey("it is empty")
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidKey(f"it is {len(text)} characters long, more than {MAX_KEY_LENGTH}")
    return text


def _unquote(text: str) -> str:
    if len(text) < 2 or not text.endswith('"'):
        raise InvalidKey("its quoted string is not terminated")
    out: list[str] = []
    chars = iter(text[1:-1])
    for c in chars:
        if c == "\\":
            escaped = next(chars, "")
            if escaped not in ('"', "\\"):
                raise InvalidKey("its quoted string has an invalid escape")
            out.append(escaped)
        elif c == '"':
            raise InvalidKey("its quoted string has an unescaped quote")
        elif not 0x20 <= ord(c) <= 0x7E:
            raise InvalidKey("it contains a non-printable character")
        else:
            out.append(c)
    return "".join(out)
