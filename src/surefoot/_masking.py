"""Values in messages: quoted short, secrets never (configuration problems, store errors).

``surefoot._config`` (the configuration toolkit), the stores and the command line quote
what they refuse with ``shown``, and URLs with ``masked_url`` / ``masked_text``.

Rule 1: a secret is never quoted. ``shown(value, secret=True)`` names only the kind of
        value (``an integer (hidden)``); ``masked_url`` writes ``***`` for a URL's userinfo
        password and for the value of every query parameter (or libpq ``key=value``)
        whose name holds ``pass``, ``pwd``, ``secret``, ``token``, ``key``, ``auth``,
        ``credential``, ``signature`` or ``cookie`` in any case (``password``,
        ``ssl_password``, ``sslpassword``, ``passfile``, ``sslkey``, ``api_key``,
        ``access_token``...). When where the authority ends cannot be read (an ``@``
        after the first ``/``, ``?`` or ``#``, and a ``:`` before it: a password with
        one of those unencoded), everything from ``://`` to the last ``@`` is hidden.
        ``masked_text`` hides the same secrets in a driver's message about a URL.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

from surefoot.errors import ConfigurationError

__all__ = ["masked_text", "masked_url", "secret_name", "shown", "split_url"]


def shown(value: object, *, secret: bool = False) -> str:
    """A value as a message quotes it: its repr, cut at 60 characters; a secret only by its
    kind (Rule 1)."""
    if secret:
        return f"{_KINDS.get(type(value), 'a value')} (hidden)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_KINDS: dict[type, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean",
    list: "an array", dict: "a table",
}  # fmt: skip
_SECRET = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature|cookie", re.I)


def secret_name(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a secret (Rule 1)."""
    return _SECRET.search(name) is not None


def masked_url(url: str) -> str:
    """``url`` with its password and the values of secret query parameters as ``***``.

    A libpq ``key=value`` connection string has the values of its secret keys masked.

    Example:
        >>> masked_url("redis://u:pw@db:6379/0?prefix=gw:&ssl_password=s")
        'redis://u:***@db:6379/0?prefix=gw:&ssl_password=***'
        >>> masked_url("redis://u:pa/ss@db:6379/0")  # an unencoded '/' in the password
        'redis://***@db:6379/0'
    """
    # Cut by hand rather than with urlsplit: it never raises, and everything but the
    # secrets comes back exactly as written (urlunsplit turns sqlite:/// into sqlite:/).
    out, last = [], 0
    for start, end in _secret_spans(url):
        out += [url[last:start], "***"]
        last = end
    return "".join(out) + url[last:]


def masked_text(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) with ``url`` shown masked and each of
    its secrets, wherever else it appears (also percent-decoded), as ``***``."""
    text = text.replace(url, masked_url(url))
    secrets = {url[start:end] for start, end in _secret_spans(url)}
    forms = {form for secret in secrets for form in (secret, unquote(secret), secret.strip("'"))}
    for form in sorted(forms - {""}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


_CONNINFO = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
_CONNINFO_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the secrets of ``url`` are, in order (Rule 1)."""
    if "://" not in url and _CONNINFO.match(url):  # libpq: host=db password='s p'
        return [m.span(2) for m in _CONNINFO_PAIR.finditer(url) if secret_name(m.group(1))]
    spans: list[tuple[int, int]] = []
    tail = 0
    slashes = url.find("://")
    if slashes >= 0:
        start = slashes + 3
        end = _delimiter(url, start)
        at = url.rfind("@")
        if at >= end and ":" in url[start:at]:
            # An '@' after where the authority seems to end, and a ':' before it: the
            # password may hold an unencoded '/', '?' or '#', so where it ends cannot be
            # read. Everything up to the last '@' is hidden.
            spans.append((start, at))
            end = _delimiter(url, at)
        else:
            at = url.rfind("@", start, end)
            colon = url.find(":", start, at)
            if at >= 0 and colon >= 0:
                spans.append((colon + 1, at))
        tail = end
    fragment = url.find("#", tail)
    fragment = fragment if fragment >= 0 else len(url)
    question = url.find("?", tail, fragment)
    if question >= 0:
        position = question + 1
        for pair in url[position:fragment].split("&"):
            name, equals, _ = pair.partition("=")
            if equals and secret_name(unquote_plus(name)):
                spans.append((position + len(name) + 1, position + len(pair)))
            position += len(pair) + 1
    return spans


def _delimiter(url: str, start: int) -> int:
    """Where the first '/', '?' or '#' from ``start`` is (the end of an authority)."""
    found = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
    return min(found, default=len(url))


def split_url(url: str, what: str = "store URL") -> SplitResult:
    """``urlsplit(url)`` with a readable port, or a ``ConfigurationError`` naming ``url``
    masked (Rule 1).

    ``urlsplit`` refuses a ``[`` without ``]``, an invalid IPv6 address between brackets
    and some non-ASCII hosts, and its ``port`` a port that is not a number (as a password
    holding an unencoded ``/``, ``?`` or ``#`` makes: ``redis://u:pa/ss@host`` reads as
    the host ``u`` and the port ``pa``), each with a ``ValueError`` whose message may
    quote the authority, password included: it is never shown.

    Raises:
        ConfigurationError: ``what`` cannot be split.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ConfigurationError(
            f"{what} {masked_url(url)!r} cannot be read: expected a host name, an IPv4 "
            "address or an IPv6 address in brackets, a port number, and '[', ']', '/', "
            "'?', '#' and '@' percent-encoded in a user name or password"
        ) from None
    return parts
