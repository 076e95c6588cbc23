"""The request head as ``surefoot serve`` accepts it: limits and refusals, sans I/O.

The gateway's HTTP server (``_server.py``) reports here what its parser saw, piece by
piece, and answers the error it gets back; nothing here reads a socket or the clock.

Rule 1: a head is bounded: each field (name and value) at most ``max_header_size`` bytes,
        the request target and every field together at most ``max_headers_size``, at most
        ``max_header_count`` fields. A field still arriving counts as soon as its bytes are
        received, so no field is buffered past its limit by more than one read. Over any
        limit is a 431 ``RequestHeadersTooLarge``.
Rule 2: the trailer fields of a chunked body count toward the same limits, and are then
        dropped: they never become header fields.
Rule 3: a request that asks to switch protocols (any ``Upgrade`` field, ``CONNECT``) is a
        400 ``UpgradeNotSupported``: the parser reads whatever follows such a head as the
        other protocol, so serving it as HTTP would read a body as the next request.
Rule 4: an HTTP/1.1 request has exactly one ``Host`` field, any other at most one; an
        absolute-form target names the same authority as ``Host``; the asterisk-form
        target ``*`` is for ``OPTIONS`` only. Otherwise a 400 ``BadRequest``.
Rule 5: a refusal is a complete HTTP/1.1 response that closes the connection: an RFC 9457
        problem document whose reason is fixed text and counts, never the request's bytes.
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from surefoot.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    ClientError,
    RequestHeadersTooLarge,
    SurefootError,
    UpgradeNotSupported,
    problem_body,
)

__all__ = ["HeadMeter", "ServerLimits", "problem_response", "refusal"]

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True)
class ServerLimits:
    """What the gateway's HTTP server accepts from a client (``[server]`` in the policy file).

    Attributes:
        max_header_size: bytes of one header field, name and value.
        max_headers_size: bytes of the request target and every header field together.
        max_header_count: header fields in one request.
        header_timeout: seconds for the whole head to arrive, from the connection's start
            or, on a kept-alive connection, from the request's first byte.
        body_timeout: seconds for the whole body to arrive, from the end of the head.
            Both count only the time the server reads (``_server.py``, Rule 2).
        keepalive_timeout: seconds a connection may stay idle between requests; and, once
            closed, the seconds its client may take nothing of what is still buffered for
            it before the connection is reset.
    """

    max_header_size: int = 32 * 1024
    max_headers_size: int = 64 * 1024
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0


class HeadMeter:
    """Measures one request's head and trailer section against ``ServerLimits`` (Rules 1-2).

    Each method returns the error to answer once a limit is passed, else None.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.size = 0
        self.count = 0
        self.unfinished = 0  # bytes received of a field not complete yet

    def target(self, piece: bytes) -> RequestHeadersTooLarge | None:
        """A piece of the request target arrived."""
        self.size += len(piece)
        return self._total(0)

    def field(self, name: bytes, value: bytes) -> RequestHeadersTooLarge | None:
        """A whole header (or trailer) field arrived."""
        self.count += 1
        if self.count > self.limits.max_header_count:
            return RequestHeadersTooLarge(
                reason=f"more than {self.limits.max_header_count} header fields"
            )
        size = len(name) + len(value)
        if size > self.limits.max_header_size:
            return self._field_too_large()
        self.size += size
        # _total(0) without the call: this runs for every field of every request.
        if self.size > self.limits.max_headers_size:
            return self._headers_too_large()
        return None

    def fed(self, size: int, *, parsed: bool) -> RequestHeadersTooLarge | None:
        """``size`` bytes were fed to the parser. ``parsed``: a parser callback ran on them,
        or no request is under way, so a field still arriving began in them (one read of
        slack, Rule 1); otherwise they all belong to a field not complete yet, counted with
        the reads before them until it is."""
        if parsed:
            self.unfinished = 0
            return None
        self.unfinished += size
        return self.pending(self.unfinished)

    def pending(self, size: int) -> RequestHeadersTooLarge | None:
        """``size`` bytes of a field are received and the field is not complete yet."""
        if size > self.limits.max_header_size:
            return self._field_too_large()
        return self._total(size)

    def _total(self, pending: int) -> RequestHeadersTooLarge | None:
        if self.size + pending > self.limits.max_headers_size:
            return self._headers_too_large()
        return None

    def _headers_too_large(self) -> RequestHeadersTooLarge:
        return RequestHeadersTooLarge(
            reason=f"the request target and header fields are over "
            f"{self.limits.max_headers_size} bytes"
        )

    def _field_too_large(self) -> RequestHeadersTooLarge:
        return RequestHeadersTooLarge(
            reason=f"a header field is over {self.limits.max_header_size} bytes"
        )


def refusal(
    method: bytes,
    target: bytes,
    http_version: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    upgrade: bool,
) -> ClientError | None:
    """Why a parsed head cannot be served (Rules 3-4), or None.

    Args:
        method: the request method.
        target: the request target as sent.
        http_version: ``"1.1"`` or ``"1.0"``.
        headers: the header fields, names in lower case.
        upgrade: the parser read the head as a protocol switch (``CONNECT``, or
            ``Connection: upgrade`` with ``Upgrade``).
    """
    protocols: list[bytes] = []
    hosts: list[bytes] = []
    for name, value in headers:  # one pass, not two: this runs for every request
        if name == b"host":
            hosts.append(value)
        elif name == b"upgrade":
            protocols.append(value)
    if upgrade or protocols or method == b"CONNECT":
        named = b", ".join(protocols).decode("ascii", "replace")[:64]
        return UpgradeNotSupported(protocol=named or method.decode("ascii", "replace"))
    if target == b"*" and method != b"OPTIONS":
        return BadRequest(reason="the target '*' is for OPTIONS requests only")
    if len(hosts) > 1:
        return BadRequest(reason="more than one Host header field")
    if not hosts and http_version == "1.1":
        return BadRequest(reason="an HTTP/1.1 request needs a Host header field")
    if target.startswith(b"/") or target == b"*":
        return None
    parts = urlsplit(target.decode("latin-1"))
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        return BadRequest(reason="the target is neither a path nor an absolute http(s) URL")
    if hosts and _authority(parts.netloc, scheme) != _authority(hosts[0].decode("latin-1"), scheme):
        return BadRequest(reason="the target's authority differs from the Host header field")
    return None


def _authority(authority: str, scheme: str) -> str:
    """``authority`` compared as RFC 9110 section 4.2.3 says: no case, no default port."""
    return authority.lower().removesuffix(_DEFAULT_PORTS[scheme])


def problem_response(
    error: SurefootError, *, request_id: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """The whole HTTP/1.1 response refusing a request with ``error`` (Rule 5)."""
    body = problem_body(error, request_id=request_id)
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, http.HTTPStatus(error.status).phrase.encode()),
        b"content-type: " + PROBLEM_CONTENT_TYPE.encode(),
        b"content-length: %d" % len(body),
        b"x-request-id: " + request_id.encode(),
        *(name + b": " + value for name, value in headers),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
