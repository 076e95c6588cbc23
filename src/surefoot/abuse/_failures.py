"""Failure-based bans (fail2ban's jails, per route): what counts, who is counted, how long.

A ``FailureRule`` counts the upstream's answers whose status it names (401 and 403 on a
login route, say) per *subject*, and bans the subject once ``threshold`` of them fall in
``window`` seconds::

    by = "address"    one client address          password spraying: one address, many accounts
    by = "network"    its /24 (IPv4) or /64 (IPv6) an attacker rotating addresses in one network
    by = "account"    the account tried (hashed)  credential stuffing: many addresses, one account
    by = "principal"  the credential or user      one API key failing again and again

Rule 1: the count is the store's (a sliding log of ``threshold`` entries per subject,
        shared by every worker and host): ``verdict`` reads it from the decision of the
        failure that was just counted, so the ``threshold``-th failure is the one that bans,
        wherever it was served.
Rule 2: the ban of a subject's n-th offence lasts ``ban * ban_factor ** (n - 1)`` seconds,
        at most ``ban_max`` (fail2ban's ``bantime.increment``); an offence is remembered
        for ``forget_after`` seconds after its ban ends, then the next one is a first again.
Rule 3: an account is never kept as sent: it is read from the request (a JSON or form
        field, a header, a query parameter or the Basic credentials' user name), trimmed,
        lower-cased and hashed (``acct:`` and 128 bits of BLAKE2b, keyed with the
        gateway's secret if it has one), so neither the store nor a log holds a login name.
Rule 4: what cannot be read (no such field, a body that is not JSON, an address that does
        not parse) counts nothing: a rule never bans on a guess.
Rule 5: a ban starts the count again, as fail2ban does: the failures that led to it never
        count towards the next one. While a subject's last ban is remembered, its failures
        are counted under a key naming that ban; once it is forgotten (``forget_after``
        after the ban ended, at least ``window``), under the rule's plain key again, whose
        failures are all older than the window by then.
Rule 6: a request naming the account more than once (a form field, a query parameter, a
        JSON key or a header repeated with different values) names them all: frameworks
        disagree on which one counts (Starlette the last, Werkzeug the first), so the
        guard refuses it rather than count one account while the app logs into another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal
from urllib.parse import parse_qsl

from surefoot.abuse._bans import Kind, network_of

__all__ = ["AccountSource", "FailureRule", "account_hash", "ban_time"]

#: The longest account name read (characters); a longer one is not an account.
MAX_ACCOUNT = 256
#: The kinds of account sources: where the request names the account it tries.
SOURCES = ("json", "form", "header", "query", "basic")


def ban_time(base: float, offence: int, factor: float, maximum: float) -> float:
    """How long the ``offence``-th ban of a subject lasts (Rule 2)."""
    if offence <= 1 or factor == 1:
        return min(base, maximum)
    # factor ** (offence - 1) overflows long before it matters: cap the exponent.
    exponent = min(offence - 1, 64)
    return min(base * factor**exponent, maximum)


def account_hash(name: str, secret: bytes = b"") -> str:
    """``acct:`` and the hash of an account name (Rule 3)."""
    # surrogatepass: a lone surrogate from a JSON body is an account like any other.
    text = name.strip().lower().encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, digest_size=16, key=secret)
    return "acct:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AccountSource:
    """Where a request names the account it tries: ``json:username``, ``form:login``,
    ``header:x-user``, ``query:user`` or ``basic`` (the user name of Basic credentials).

    Raises:
        ValueError: an unknown kind, or a name missing or given where none is taken.
    """

    kind: Literal["json", "form", "header", "query", "basic"]
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> AccountSource:
        kind, _, name = text.partition(":")
        if kind not in SOURCES:
            raise ValueError(
                "expected 'json:FIELD', 'form:FIELD', 'header:NAME', 'query:NAME' or "
                f"'basic', got {text!r}"
            )
        if (kind == "basic") != (name == ""):
            raise ValueError(
                "'basic' takes no name" if name else f"expected a name after '{kind}:'"
            )
        if kind == "header":
            name = name.lower()
        return cls(kind, name)  # type: ignore[arg-type]

    @property
    def reads_body(self) -> bool:
        """Whether the account is in the body (the request must be read before it goes on)."""
        return self.kind in ("json", "form")

    def extract(
        self, headers: list[tuple[bytes, bytes]], query: bytes = b"", body: bytes = b""
    ) -> tuple[str, ...]:
        """Every account the request names, in order, each once (Rule 4: what cannot be
        read is left out; Rule 6: more than one is for the caller to refuse)."""
        found: list[object] = []
        if self.kind == "json":
            try:
                document = json.loads(body, object_pairs_hook=_Pairs)
            except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
                return ()
            if isinstance(document, _Pairs):
                found = [value for key, value in document if key == self.name]
        elif self.kind in ("form", "query"):
            # As leniently as a framework reads it (Starlette: latin-1, any number of
            # fields; the body is bounded by the guard): what it would read, we read.
            text = (body if self.kind == "form" else query).decode("latin-1")
            found = [value for key, value in parse_qsl(text) if key == self.name]
        elif self.kind == "header":
            wanted = self.name.encode()
            found = [value.decode("latin-1") for key, value in headers if key == wanted]
        else:
            found = [_basic_user(headers)]
        names = (item.strip() for item in found if isinstance(item, str))
        return tuple(dict.fromkeys(name for name in names if 0 < len(name) <= MAX_ACCOUNT))

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


@dataclass(frozen=True, slots=True)
class FailureRule:
    """One ``[[abuse.failures]]`` rule (see the module docstring); validated by the schema."""

    name: str
    routes: tuple[str, ...]
    by: Kind
    statuses: frozenset[int] = frozenset({401, 403})
    threshold: int = 5
    window: float = 600.0
    ban: float = 600.0
    ban_factor: float = 2.0
    ban_max: float = 7 * 86400.0
    forget_after: float = 86400.0
    challenge_after: int | None = None
    account: AccountSource | None = None
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64

    def counts(self, status: int) -> bool:
        """Whether an answer with ``status`` is a failure for this rule."""
        return status in self.statuses

    def subject(self, address: str, principal: str, account: str | None) -> str | None:
        """The value this rule counts for a request (None: nothing to count, Rule 4)."""
        if self.by is Kind.ACCOUNT:
            return account
        if self.by is Kind.PRINCIPAL:
            return principal
        try:
            parsed = ip_address(address)
        except ValueError:
            return None
        if self.by is Kind.ADDRESS:
            mapped = getattr(parsed, "ipv4_mapped", None)
            return str(mapped or parsed)
        try:
            return network_of(address, self.ipv4_prefix, self.ipv6_prefix)
        except ValueError:  # an address with a zone id (fe80::1%eth0): no network of it
            return None

    def counter(self, subject: str, since: float | None = None) -> str:
        """The store key counting this rule's failures of ``subject`` made after its last
        ban, made at ``since`` (Rule 5)."""
        key = f"abuse:{self.name}:{subject}"
        return key if since is None else f"{key}@{since:.0f}"

    def verdict(self, remaining: int, allowed: bool) -> Literal["ban", "challenge"] | None:
        """What the failure just counted calls for, from the counter's decision (Rule 1):
        a failure the counter refused is past the threshold, one it admitted with nothing
        remaining is the threshold-th."""
        count = self.threshold if not allowed else self.threshold - remaining
        if count >= self.threshold:
            return "ban"
        if self.challenge_after is not None and count >= self.challenge_after:
            return "challenge"
        return None

    def ban_for(self, offence: int) -> float:
        """How long this rule bans a subject for its ``offence``-th time (Rule 2)."""
        return ban_time(self.ban, offence, self.ban_factor, self.ban_max)


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its (key, value) pairs, duplicates kept (Rule 6)."""


def _basic_user(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key != b"authorization":
            continue
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        token = token.strip()
        token += b"=" * (-len(token) % 4)  # unpadded, as lenient decoders accept it
        try:
            decoded = base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, _ = decoded.partition(":")
        return user if colon else None
    return None
