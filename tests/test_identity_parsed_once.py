"""``surefoot.identity``, Rule 6: a request's credentials are parsed once, however many
layers ask, and never from headers that were replaced since."""

from __future__ import annotations

from typing import Any

import pytest

import surefoot.identity
from surefoot.errors import CredentialsAmbiguous
from surefoot.identity import Identity, hash_credential


def scope_with(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers), "client": ("198.51.100.4", 1)}


def test_every_layer_s_question_is_answered_from_one_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    parse = surefoot.identity._parse

    def counting(name: bytes, value: bytes) -> bytes:
        parsed.append(value)
        return parse(name, value)

    identity = Identity(known_credentials=["k-1"])
    monkeypatch.setattr(surefoot.identity, "_parse", counting)
    scope = scope_with((b"authorization", b"Bearer k-1"))
    assert identity.credentials(scope) == (b"k-1",)
    assert identity(scope) == identity.rate_limit_principal(scope) == hash_credential(b"k-1")
    assert parsed == [b"Bearer k-1"]
    # Another Identity (other headers, another secret) parses for itself.
    other = Identity(credential_headers=["x-api-key", "authorization"], secret=b"s")
    assert other(scope) == hash_credential(b"k-1", secret=b"s")
    assert parsed == [b"Bearer k-1", b"Bearer k-1"]
    assert identity(scope) == hash_credential(b"k-1")
    assert parsed == [b"Bearer k-1", b"Bearer k-1", b"Bearer k-1"]


def test_headers_replaced_or_grown_since_are_parsed_again() -> None:
    identity = Identity()
    scope = scope_with((b"x-api-key", b"first"))
    assert identity(scope) == hash_credential(b"first")
    scope["headers"] = [(b"x-api-key", b"second")]  # a layer replaced the list
    assert identity(scope) == hash_credential(b"second")
    scope["headers"].append((b"authorization", b"Bearer other"))  # or added to it
    with pytest.raises(CredentialsAmbiguous):
        identity(scope)
    with pytest.raises(CredentialsAmbiguous):  # an ambiguity is raised every time
        identity.credentials(scope)


def test_the_parse_kept_in_the_scope_never_shows_a_credential() -> None:
    identity = Identity()
    scope = scope_with((b"authorization", b"Bearer secret-key"))
    identity(scope)
    assert repr(scope[surefoot.identity._PARSED]) == "<1 parsed credentials>"
