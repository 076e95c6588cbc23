"""Who is calling: the principal that scopes idempotency keys (and, later, rate limits).

A principal is a short string. Credentials are hashed before they reach a store or a log:
``cred:<hash>`` for an ``Authorization`` or ``X-API-Key`` header, else ``addr:<host>``
for the client address as the server saw it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from surefoot._asgi import Scope, header_values

__all__ = ["PrincipalResolver", "default_principal", "hash_credential"]

PrincipalResolver = Callable[[Scope], str]


def hash_credential(value: bytes, *, secret: bytes = b"") -> str:
    """``cred:`` and a 128-bit BLAKE2b hash of ``value`` (keyed with ``secret`` if given).

    Warning:
        Without a ``secret``, a low-entropy credential (a Basic-auth password) can be
        guessed back from its hash by someone who reads the store; pass a secret then.
    """
    return "cred:" + hashlib.blake2b(value, digest_size=16, key=secret).hexdigest()


def default_principal(scope: Scope) -> str:
    """The ``Authorization`` header, else ``X-API-Key``, hashed; else the client address."""
    for name in (b"authorization", b"x-api-key"):
        values = header_values(scope, name)
        if values:
            return hash_credential(values[0])
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:unknown"
