"""Canonical request paths: one spelling per resource, or a refusal.

A limit or a key requirement is attached to a route; a second spelling of the route's path
that the upstream (or the app's router) takes for the same resource would walk around it.
So every layer matches on, and forwards, one canonical spelling of the path, made here.

Rule 1: the input is the request target's path as it came off the wire (``raw_path``),
        percent-encoded bytes; the output is the canonical path both ways: ``raw`` (what is
        forwarded) and ``path`` (``raw`` decoded, what routes match).
Rule 2: a path that could mean something else to someone else is refused (``InvalidPath``),
        never guessed at: one that does not start with ``/`` (``*``); invalid
        percent-encoding (``%zz``, ``%2``); an encoded slash or backslash (``%2F``, ``%5C``);
        a raw backslash; a ``;`` raw or encoded (path parameters such as ``;jsessionid=1``,
        which some servers strip); a control character or whitespace, raw or decoded
        (0x00-0x20, 0x7F, and beyond ASCII the C1 controls and Unicode spaces that
        ``str.strip`` would remove); a ``..`` that climbs above the root.
Rule 3: everything else is normalised: escapes of unreserved characters
        (``A-Z a-z 0-9 - . _ ~``) are decoded, the hex digits of other escapes upper-cased,
        bytes that may not appear raw in a path (``"<>[]^`{|}``, non-ASCII) percent-encoded,
        repeated slashes collapsed, then dot segments removed (RFC 3986 section 5.2.4; a
        ``%2E`` is a dot by then).
Rule 4: case and a trailing slash are kept as sent: the upstream may care. Matching ignores
        them (``surefoot._routes``), which needs no second spelling here.
Rule 5: the result is a fixed point: ``canonical_path(c.raw) == c`` for every result ``c``,
        and ``c.raw`` never holds ``//``, a ``.`` or ``..`` segment, ``;``, ``%2F`` or ``%5C``.

A path already in canonical form, plain ASCII with nothing to decode or remove (the common
case), is recognised by one regular expression and returned as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from surefoot.errors import InvalidPath

__all__ = ["CanonicalPath", "canonical_path", "quote_path"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What may stay raw in the canonical form: RFC 3986's pchar and "/", minus ";" (Rule 2).
_RAW = _UNRESERVED | frozenset(b"!$&'()*+,=:@/")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_CHARS = r"A-Za-z0-9\-_~!$&'()*+,=:@"
# Canonical already: segments that are never empty and never start with a dot, of
# characters that may stay raw, and at most one trailing slash.
_PLAIN = re.compile(rf"(?:/[{_CHARS}][{_CHARS}.]*)+/?|/".encode())
# Decoded characters refused beyond ASCII (ASCII ones are refused byte by byte).
_WIDE_SPACE = re.compile(r"[\x80-\x9f\s]")


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A request path in its one spelling.

    Attributes:
        path: decoded (UTF-8; an invalid sequence becomes U+FFFD), what routes match.
        raw: percent-encoded, what is forwarded.
    """

    path: str
    raw: bytes


def canonical_path(raw: bytes) -> CanonicalPath:
    """The canonical form of the raw request path ``raw`` (no query string).

    Example:
        >>> canonical_path(b"//v1/./%63harges/x/../").raw
        b'/v1/charges/'

    Raises:
        InvalidPath: the path is one this module refuses (Rule 2); ``reason`` says why.
    """
    if _PLAIN.fullmatch(raw):
        return CanonicalPath(raw.decode("ascii"), raw)
    if not raw.startswith(b"/"):
        raise InvalidPath(reason="it does not start with '/'")
    normal = _normalised_bytes(raw)
    segments = normal.split(b"/")[1:]
    kept: list[bytes] = []
    for segment in segments:
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if not kept:
                raise InvalidPath(reason="a '..' segment climbs above the root")
            kept.pop()
            continue
        kept.append(segment)
    canonical = b"/" + b"/".join(kept)
    if kept and segments[-1] in (b"", b".", b".."):
        canonical += b"/"
    path = unquote(canonical.decode("ascii"), errors="replace")
    if _WIDE_SPACE.search(path):
        raise InvalidPath(reason="it holds a control character or whitespace")
    return CanonicalPath(path, canonical)


def quote_path(path: str) -> bytes:
    """A decoded path (``scope["path"]`` when a server gives no ``raw_path``) encoded again,
    keeping as raw what ``canonical_path`` would refuse raw, so that it still refuses it."""
    return quote(path, safe="/!$&'()*+,=:@;\\").encode("ascii")


def _normalised_bytes(raw: bytes) -> bytes:
    """``raw`` with its escapes normalised (Rule 3), or ``InvalidPath`` (Rule 2)."""
    out = bytearray()
    i, end = 0, len(raw)
    while i < end:
        byte = raw[i]
        if byte == 0x25:  # "%"
            digits = raw[i + 1 : i + 3]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                raise InvalidPath(reason="it holds an invalid percent-encoding")
            byte = int(digits, 16)
            if byte in (0x2F, 0x5C):
                raise InvalidPath(reason="it holds an encoded slash or backslash")
            _refuse(byte)
            if byte in _UNRESERVED:
                out.append(byte)
            else:
                out += b"%" + digits.upper()
            i += 3
            continue
        if byte == 0x5C:
            raise InvalidPath(reason="it holds a backslash")
        _refuse(byte)
        if byte in _RAW:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
        i += 1
    return bytes(out)


def _refuse(byte: int) -> None:
    """Refuse a byte, raw or decoded, that no path may hold."""
    if byte == 0x3B:
        raise InvalidPath(reason="it holds a ';' (path parameters are not accepted)")
    if byte <= 0x20 or byte == 0x7F:
        raise InvalidPath(reason="it holds a control character or whitespace")
