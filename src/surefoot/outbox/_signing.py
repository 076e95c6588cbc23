"""Standard Webhooks signatures for outgoing messages (pure: no I/O, no clock).

Every delivery carries ``webhook-id`` (the message id, the same on every attempt),
``webhook-timestamp`` (the attempt's time) and ``webhook-signature``: one ``v1,<base64>``
(HMAC-SHA256) per ``whsec_`` secret and one ``v1a,<base64>`` (Ed25519) per ``whsk_``
secret, space-separated, over ``{id}.{timestamp}.{body}``. A consumer checks any one of
them, which is what lets a secret be rotated without a gap.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence

from surefoot.errors import ConfigurationError

__all__ = ["sign"]


def _raw(secret: str) -> bytes:
    encoded = secret.split("_", 1)[1]
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Callable[[bytes], str]:
    raw = _raw(secret)
    if secret.startswith("whsec_"):
        return lambda content: (
            "v1,"
            + base64.b64encode(hmac.new(raw, content, hashlib.sha256).digest()).decode("ascii")
        )
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise ConfigurationError(
            "secrets: a whsk_ signing key (v1a, Ed25519) needs the 'cryptography' package: "
            "pip install 'surefoot[webhooks]'"
        ) from None
    key = Ed25519PrivateKey.from_private_bytes(
        raw[:32]
    )  # the seed; 64 bytes carry the public key too
    return lambda content: "v1a," + base64.b64encode(key.sign(content)).decode("ascii")


def sign(secrets: Sequence[str], body: bytes, *, message_id: str, timestamp: int) -> dict[str, str]:
    """The ``webhook-*`` headers of one attempt, signed with every secret."""
    content = f"{message_id}.{timestamp}.".encode("latin-1") + body
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(_signer(s)(content) for s in secrets),
    }
