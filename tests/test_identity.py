from __future__ import annotations

from typing import Any

import pytest

from surefoot.errors import ConfigurationError
from surefoot.identity import Identity, default_principal, hash_credential


def scope(peer: str | None = "203.0.113.9", **headers: str) -> dict[str, Any]:
    return {
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 1234) if peer else None,
    }


class User:
    def __init__(self, authenticated: bool) -> None:
        self.is_authenticated = authenticated
        self.identity = "u-42"


def test_credentials_then_user_then_address() -> None:
    assert default_principal(scope(authorization="Bearer t")) == hash_credential(b"Bearer t")
    assert default_principal(scope(x_api_key="k")) == hash_credential(b"k")
    assert default_principal({**scope(), "user": User(True)}) == "user:u-42"
    assert default_principal({**scope(), "user": User(False)}) == "addr:203.0.113.9"
    assert default_principal(scope(peer=None)) == "addr:unknown"
    assert Identity(use_user=False)({**scope(), "user": User(True)}) == "addr:203.0.113.9"


def test_secret_keyed_hashes_differ() -> None:
    assert Identity(secret=b"s")(scope(x_api_key="k")) != hash_credential(b"k")
    assert Identity(credential_headers=["x-tenant"])(scope(x_tenant="t")) == hash_credential(b"t")


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # Untrusted peers: forwarding headers are ignored.
        ("203.0.113.9", {"x_forwarded_for": "1.2.3.4"}, "203.0.113.9"),
        ("203.0.113.9", {"forwarded": "for=1.2.3.4"}, "203.0.113.9"),
        # Trusted proxy: the nearest untrusted hop is the client.
        ("10.0.0.1", {"x_forwarded_for": "1.2.3.4"}, "1.2.3.4"),
        ("10.0.0.1", {"x_forwarded_for": "6.6.6.6, 1.2.3.4, 10.0.0.2"}, "1.2.3.4"),
        (
            "10.0.0.1",
            {"forwarded": 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https'},
            "2001:db8::1",
        ),
        ("10.0.0.1", {"forwarded": "for=1.2.3.4:8080", "x_forwarded_for": "9.9.9.9"}, "1.2.3.4"),
        # Garbage stops the walk at the last trusted proxy.
        ("10.0.0.1", {"x_forwarded_for": "not-an-ip"}, "10.0.0.1"),
        ("10.0.0.1", {"forwarded": "for=_hidden"}, "10.0.0.1"),
        # A proxy with nothing to say.
        ("10.0.0.1", {}, "10.0.0.1"),
        ("::1", {"x_forwarded_for": "1.2.3.4"}, "1.2.3.4"),
        ("unix-socket", {"x_forwarded_for": "1.2.3.4"}, "unix-socket"),
    ],
)
def test_client_address_through_trusted_proxies(
    peer: str, headers: dict[str, str], expected: str
) -> None:
    identity = Identity(trusted_proxies=["10.0.0.0/8", "::1"])
    assert identity.client_address(scope(peer, **headers)) == expected
    assert identity(scope(peer, **headers)) == f"addr:{expected}"


def test_bad_trusted_proxy_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"Identity\.trusted_proxies: expected IP addresses"
    ):
        Identity(trusted_proxies=["10.0.0.0/33"])
    assert "10.0.0.0/8" in repr(Identity(trusted_proxies=["10.0.0.0/8"]))
