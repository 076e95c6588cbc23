"""Who is calling: the principal that scopes idempotency keys and rate limits.

A principal is a short string:

- ``cred:<hash>``: a credential (an API key, a Bearer token, another ``Authorization``
  credential), hashed before it reaches a store or a log;
- ``user:<id>``: the authenticated user an auth middleware put in ``scope["user"]``;
- ``addr:<ip>``: the client address. The forwarding header your proxies write
  (``X-Forwarded-For`` by default, or ``Forwarded``: one, never both, since a proxy that
  appends to one passes a client's own copy of the other through untouched) is believed
  only when the peer that sent it is a configured trusted proxy, and then only as far
  back as the chain of trusted proxies goes, so a client cannot choose its own address.

Rule 1: one credential, one spelling. A credential header is parsed before it is hashed.
        In ``Authorization`` the scheme is compared case-insensitively, the spaces and
        tabs around the value and between the scheme and the credential are dropped, and
        the credential itself is kept byte for byte; a Bearer token is the token alone,
        so ``Authorization: Bearer K``, ``bearer   K`` and ``X-API-Key: K`` are one
        principal. (A value of one word, ``Authorization: K``, is the key ``K``.) Any
        other credential header (``X-API-Key``) is its value without surrounding spaces
        and tabs. An empty value is no credential.
Rule 2: one value per credential header. A credential header sent twice, or an
        ``Authorization`` value holding a comma list of credentials (an element after a
        comma that is not an ``name=value`` auth-param), raises ``CredentialsAmbiguous``
        (400): which of them the app or the upstream would believe is not ours to guess,
        and guessing differently from it is how a caller would pick its own bucket.
Rule 3: precedence. With ``known_credentials`` the first *known* credential present, in
        the order of ``credential_headers``, names the principal, wherever it stands, so a
        real ``X-API-Key`` beside a junk ``Authorization`` is still its client. Without
        them, credential headers that carry *different* credentials raise
        ``CredentialsAmbiguous`` (Rule 2's reason: a junk ``Authorization`` beside a real
        ``X-API-Key`` would otherwise pick the bucket while the upstream authenticates
        the key); the same credential in several headers is one principal.
Rule 4: two views of one request. ``identity(scope)`` scopes idempotency keys and is the
        credential itself whenever there is one. ``identity.rate_limit_principal(scope)``
        is what rate limits count: the same, except that a credential that is not among
        ``known_credentials`` (when they are given) counts as the authenticated user, else
        as the address. They differ on purpose: an unknown credential costs nothing to
        mint, so it must not buy a fresh bucket, but two unknown keys behind one NAT must
        never share stored responses (one principal never receives another's), so records
        stay per credential while counters fall back to the address.
Rule 5: ``address_principal(scope)`` is ``addr:`` and the client address (through trusted
        proxies only), whatever the credentials: a rate-limit policy counted
        ``per="address"`` puts a ceiling on one address over all of its credentials.
Rule 6: a request's credentials are parsed once per ``Identity``, however many layers ask
        (the gateway's check, the rate limiter, the idempotency layer): the result is kept
        in the scope beside the header list it came from, and parsed again if that list
        was replaced or changed length. An ambiguity is never kept: it is raised each time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Literal

from surefoot._asgi import Scope, header_values
from surefoot.errors import ConfigurationError, CredentialsAmbiguous

__all__ = ["Identity", "PrincipalResolver", "default_principal", "hash_credential"]

PrincipalResolver = Callable[[Scope], str]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_WHITESPACE = b" \t"
_AUTHORIZATION = b"authorization"
#: An auth-param's start (RFC 9110 section 11.2): a token, optional whitespace, ``=``.
_AUTH_PARAM = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*=")
_SCHEME_END = re.compile(rb"[ \t]+")
#: Scope key of a request's ``_Parsed`` credentials (Rule 6).
_PARSED = "surefoot.identity.parsed"


def hash_credential(value: bytes, *, secret: bytes = b"") -> str:
    """``cred:`` and a 128-bit BLAKE2b hash of ``value`` (keyed with ``secret`` if given).

    Warning:
        Without a ``secret``, a low-entropy credential (a Basic-auth password) can be
        guessed back from its hash by someone who reads the store; pass a secret then.
    """
    return "cred:" + hashlib.blake2b(value, digest_size=16, key=secret).hexdigest()


class Identity:
    """A principal resolver: credentials, then the authenticated user, then the address.

    Example:
        >>> identity = Identity(trusted_proxies=["10.0.0.0/8", "127.0.0.1"])
        >>> app = IdempotencyMiddleware(app, store=store, principal=identity)
        >>> app = RateLimitMiddleware(app, store=store, policies=[...], principal=identity)

    ``RateLimitMiddleware`` given an ``Identity`` counts its ``rate_limit_principal``
    (unknown credentials as their address), and its ``address_principal`` for policies
    counted ``per="address"``; ``IdempotencyMiddleware`` scopes keys by ``identity(scope)``.

    Args:
        credential_headers: headers whose value identifies a client, in order of
            precedence (Rules 1 to 3 of the module).
        use_user: use ``scope["user"]`` when it is authenticated.
        trusted_proxies: addresses or networks of your own proxies and load balancers.
        secret: key for hashing credentials.
        known_credentials: the API keys you issued (a collection of keys, as sent in
            ``X-API-Key`` or after ``Bearer``), or a function telling whether a parsed
            credential is one. Given, a request with an unknown credential is rate
            limited as its address (or authenticated user); None (the default): every
            credential is its own principal, as when the app behind verifies keys.
        forwarded_header: the header your trusted proxies write the client's address in,
            ``"x-forwarded-for"`` (the default) or ``"forwarded"`` (RFC 7239); the other
            one is never read.

    Raises:
        CredentialsAmbiguous: (when resolving) a credential header sent twice, an
            ``Authorization`` holding several credentials, or, without
            ``known_credentials``, credential headers carrying different credentials.
    """

    def __init__(
        self,
        *,
        credential_headers: Sequence[str] = ("authorization", "x-api-key"),
        use_user: bool = True,
        trusted_proxies: Iterable[str] = (),
        secret: bytes = b"",
        known_credentials: Iterable[str | bytes] | Callable[[bytes], bool] | None = None,
        forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
    ) -> None:
        if forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise ConfigurationError(
                "Identity.forwarded_header: expected 'x-forwarded-for' or 'forwarded', "
                f"got {forwarded_header!r}"
            )
        self.forwarded_header = forwarded_header
        if isinstance(credential_headers, str):
            credential_headers = [credential_headers]
        self.credential_headers = tuple(
            dict.fromkeys(h.lower().encode("latin-1") for h in credential_headers)
        )
        self.use_user = use_user
        self.secret = secret
        try:
            self.trusted: tuple[_Network, ...] = tuple(
                ipaddress.ip_network(p, strict=False) for p in trusted_proxies
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"Identity.trusted_proxies: expected IP addresses or networks, {exc}"
            ) from None
        self._known, self._known_keys = _known(known_credentials)

    def __call__(self, scope: Scope) -> str:
        """The principal that scopes idempotency keys: the credential itself if any."""
        credential, _ = self._credential(scope)
        if credential is not None:
            return credential
        return self._user(scope) or self.address_principal(scope)

    @property
    def lists_credentials(self) -> bool:
        """Whether ``known_credentials`` were given: only then can an unknown credential
        count as its address, and ``rate_limit_principal`` differ from ``identity(scope)``."""
        return self._known is not None

    def rate_limit_principal(self, scope: Scope) -> str:
        """The principal rate limits count: an unknown credential counts as its address."""
        credential, known = self._credential(scope)
        if credential is not None and known:
            return credential
        return self._user(scope) or self.address_principal(scope)

    def address_principal(self, scope: Scope) -> str:
        """``addr:`` and the client's address, whatever its credentials."""
        return "addr:" + self.client_address(scope)

    def credentials(self, scope: Scope) -> tuple[bytes, ...]:
        """The request's credentials, parsed (Rule 1), in order of precedence.

        Raises:
            CredentialsAmbiguous: a credential header sent twice, an ``Authorization``
                value holding several credentials, or (without ``known_credentials``)
                headers carrying different credentials.
        """
        return self._parsed(scope).credentials

    def _parsed(self, scope: Scope) -> _Parsed:
        """The request's credentials, parsed once (Rule 6)."""
        headers = scope["headers"]
        parsed: _Parsed | None = scope.get(_PARSED)
        if (
            parsed is not None
            and parsed.identity is self
            and parsed.headers is headers
            and parsed.count == len(headers)
        ):
            return parsed
        found: dict[bytes, bytes] = {}
        for name, value in headers:
            if name in self.credential_headers:
                if name in found:
                    raise CredentialsAmbiguous(
                        reason=f"the {name.decode('latin-1')} header was sent more than once"
                    )
                found[name] = value
        credentials: tuple[bytes, ...] = ()
        if found:
            values = (
                _parse(name, found[name]) for name in self.credential_headers if name in found
            )
            credentials = tuple(credential for credential in values if credential)
            if self._known is None and any(c != credentials[0] for c in credentials):  # Rule 3
                names = ", ".join(h.decode("latin-1") for h in self.credential_headers)
                raise CredentialsAmbiguous(
                    reason=f"the credential headers ({names}) carry different credentials"
                )
        parsed = scope[_PARSED] = _Parsed(self, headers, credentials)
        return parsed

    def _credential(self, scope: Scope) -> tuple[str | None, bool]:
        """The credential principal (None: no credential) and whether it is known."""
        parsed = self._parsed(scope)
        if parsed.principal is None:
            parsed.principal = self._principal_of(parsed.credentials)
        return parsed.principal

    def _principal_of(self, found: tuple[bytes, ...]) -> tuple[str | None, bool]:
        if not found:
            return None, False
        if self._known is None:
            return hash_credential(found[0], secret=self.secret), True
        for credential in found:
            if self._known(credential):
                return hash_credential(credential, secret=self.secret), True
        return hash_credential(found[0], secret=self.secret), False

    def _user(self, scope: Scope) -> str | None:
        if self.use_user:
            user = scope.get("user")
            if user is not None and getattr(user, "is_authenticated", False):
                ident = getattr(user, "identity", None) or getattr(user, "display_name", "")
                return f"user:{ident}"
        return None

    def client_address(self, scope: Scope) -> str:
        """The client's address, through trusted proxies only."""
        client = scope.get("client")
        if not client:
            return "unknown"
        if not self.trusted:
            return str(client[0])
        peer = _parse_address(client[0])
        if peer is None or not self._trusted(peer):
            return str(peer or client[0])
        address = peer
        for hop in reversed(self._forwarded_chain(scope)):
            if not self._trusted(address):
                break
            parsed = _parse_address(hop)
            if parsed is None:
                break  # a malformed hop: stop at the last trusted proxy
            address = parsed
        return str(address)

    def is_trusted(self, host: str) -> bool:
        """Whether ``host`` (an address as text) is one of the trusted proxies."""
        address = _parse_address(host)
        return address is not None and self._trusted(address)

    def _trusted(self, address: _Address) -> bool:
        return any(address in network for network in self.trusted)

    def _forwarded_chain(self, scope: Scope) -> list[str]:
        """Client-first list of addresses from the configured forwarding header."""
        if self.forwarded_header == "forwarded":
            forwarded = header_values(scope, b"forwarded")
            chain = []
            for element in b",".join(forwarded).decode("latin-1").split(","):
                for pair in element.split(";"):
                    name, _, value = pair.strip().partition("=")
                    if name.lower() == "for":
                        chain.append(value.strip().strip('"'))
            return chain
        xff = header_values(scope, b"x-forwarded-for")
        return [h.strip() for h in b",".join(xff).decode("latin-1").split(",") if h.strip()]

    def __repr__(self) -> str:
        proxies = [str(n) for n in self.trusted]
        headers = [h.decode("latin-1") for h in self.credential_headers]
        if self._known is None:
            known = "None"
        elif self._known_keys is not None:
            known = f"<{self._known_keys} keys>"  # never the keys themselves
        else:
            known = "<function>"
        return (
            f"Identity(credential_headers={headers}, trusted_proxies={proxies}, "
            f"known_credentials={known})"
        )


class _Parsed:
    """A request's parsed credentials, kept in its scope (Rule 6); never shows them."""

    __slots__ = ("count", "credentials", "headers", "identity", "principal")

    def __init__(self, identity: Identity, headers: Sized, credentials: tuple[bytes, ...]) -> None:
        self.identity = identity
        self.headers = headers
        self.count = len(headers)
        self.credentials = credentials
        self.principal: tuple[str | None, bool] | None = None  # made when first asked

    def __repr__(self) -> str:
        return f"<{len(self.credentials)} parsed credentials>"


def _known(
    known: Iterable[str | bytes] | Callable[[bytes], bool] | None,
) -> tuple[Callable[[bytes], bool] | None, int | None]:
    """``known_credentials`` as a predicate on parsed credentials (None: every one is), and
    how many keys it knows (None: a function decides)."""
    if known is None or callable(known):
        return known, None
    if isinstance(known, str | bytes):
        raise ConfigurationError(
            "Identity.known_credentials: expected a collection of API keys or a function, "
            "got a single string"
        )
    keys: set[bytes] = set()
    for key in known:
        if not isinstance(key, str | bytes):
            raise ConfigurationError(
                "Identity.known_credentials: expected API keys as str or bytes, "
                f"got {type(key).__name__}"
            )
        # Parsed as a request's X-API-Key would be, so that a key always meets itself.
        raw = _parse(b"x-api-key", key.encode() if isinstance(key, str) else key)
        if raw:
            keys.add(raw)
    return frozenset(keys).__contains__, len(keys)


def _parse(name: bytes, value: bytes) -> bytes:
    """The credential in one header field, in its one spelling (Rule 1); empty: none."""
    value = value.strip(_WHITESPACE)
    if name != _AUTHORIZATION or not value:
        return value
    if _holds_several(value):
        raise CredentialsAmbiguous(reason="the authorization header holds more than one credential")
    parts = _SCHEME_END.split(value, maxsplit=1)
    if len(parts) == 1:
        return value  # one word: a bare key, kept as it is
    scheme, credential = parts[0].lower(), parts[1]
    if scheme == b"bearer":
        return credential
    return scheme + b" " + credential


def _holds_several(value: bytes) -> bool:
    """Whether an ``Authorization`` value is a comma list of credentials (Rule 2).

    A credential is a scheme and then a token68 or ``name=value`` auth-params separated by
    commas, so after the first comma (outside quoted strings) anything but an auth-param
    starts another credential.
    """
    if b"," not in value:
        return False
    elements: list[bytes] = []
    start, quoted, escaped = 0, False, False
    for index, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:  # a backslash inside a quoted string
            escaped = True
        elif byte == 0x22:  # a double quote
            quoted = not quoted
        elif byte == 0x2C and not quoted:  # a comma
            elements.append(value[start:index])
            start = index + 1
    elements.append(value[start:])
    for element in elements[1:]:
        element = element.strip(_WHITESPACE)
        if element and not _AUTH_PARAM.match(element):
            return True
    return False


def _parse_address(text: str) -> _Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` or ``2001:db8::1``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


#: The default resolver: credentials, the authenticated user, the peer address.
default_principal: PrincipalResolver = Identity()
