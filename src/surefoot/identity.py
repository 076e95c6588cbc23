"""Who is calling: the principal that scopes idempotency keys and rate limits.

A principal is a short string:

- ``cred:<hash>``: an API key or ``Authorization`` header, hashed before it reaches a
  store or a log;
- ``user:<id>``: the authenticated user an auth middleware put in ``scope["user"]``;
- ``addr:<ip>``: the client address. ``X-Forwarded-For`` and ``Forwarded`` are believed
  only when the peer that sent them is a configured trusted proxy, and then only as far
  back as the chain of trusted proxies goes, so a client cannot choose its own address.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence

from surefoot._asgi import Scope, header_values
from surefoot.errors import ConfigurationError

__all__ = ["Identity", "PrincipalResolver", "default_principal", "hash_credential"]

PrincipalResolver = Callable[[Scope], str]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        >>> app = RateLimitMiddleware(app, store=store, policies=[...], principal=identity)

    Args:
        credential_headers: headers whose value identifies a client, first found wins.
        use_user: use ``scope["user"]`` when it is authenticated.
        trusted_proxies: addresses or networks of your own proxies and load balancers.
        secret: key for hashing credentials.
    """

    def __init__(
        self,
        *,
        credential_headers: Sequence[str] = ("authorization", "x-api-key"),
        use_user: bool = True,
        trusted_proxies: Iterable[str] = (),
        secret: bytes = b"",
    ) -> None:
        self.credential_headers = tuple(h.lower().encode("latin-1") for h in credential_headers)
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

    def __call__(self, scope: Scope) -> str:
        for name in self.credential_headers:
            values = header_values(scope, name)
            if values:
                return hash_credential(values[0], secret=self.secret)
        if self.use_user:
            user = scope.get("user")
            if user is not None and getattr(user, "is_authenticated", False):
                ident = getattr(user, "identity", None) or getattr(user, "display_name", "")
                return f"user:{ident}"
        return "addr:" + self.client_address(scope)

    def client_address(self, scope: Scope) -> str:
        """The client's address, through trusted proxies only."""
        client = scope.get("client")
        if not client:
            return "unknown"
        if not self.trusted:
            return str(client[0])
        peer = _parse(client[0])
        if peer is None or not self._trusted(peer):
            return str(peer or client[0])
        address = peer
        for hop in reversed(self._forwarded_chain(scope)):
            if not self._trusted(address):
                break
            parsed = _parse(hop)
            if parsed is None:
                break  # a malformed hop: stop at the last trusted proxy
            address = parsed
        return str(address)

    def is_trusted(self, host: str) -> bool:
        """Whether ``host`` (an address as text) is one of the trusted proxies."""
        address = _parse(host)
        return address is not None and self._trusted(address)

    def _trusted(self, address: _Address) -> bool:
        return any(address in network for network in self.trusted)

    @staticmethod
    def _forwarded_chain(scope: Scope) -> list[str]:
        """Client-first list of addresses from ``Forwarded`` (preferred) or ``X-Forwarded-For``."""
        forwarded = header_values(scope, b"forwarded")
        if forwarded:
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
        return f"Identity(trusted_proxies={proxies})"


def _parse(text: str) -> _Address | None:
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
