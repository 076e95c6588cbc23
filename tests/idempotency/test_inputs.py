"""Keys, fingerprints and policies: the pure inputs of the middleware."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surefoot._json import NOT_JSON, parse_json_body
from surefoot.errors import ConfigurationError
from surefoot.idempotency import IdempotencyPolicy
from surefoot.idempotency._fingerprint import fingerprint
from surefoot.idempotency._key import InvalidKey, parse_key


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([b"abc"], "abc"),
        ([b"  abc\t"], "abc"),
        ([b'"abc"'], "abc"),
        ([b'"a \\"b\\" \\\\c"'], 'a "b" \\c'),
        ([b"abc", b'"abc"'], "abc"),
        ([b"k" * 255], "k" * 255),
    ],
)
def test_parse_key(values: list[bytes], expected: str | None) -> None:
    assert parse_key(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        [b""],
        [b'""'],
        [b"k" * 256],
        [b"a b"],
        [b"\x00"],
        [b"caf\xe9"],
        [b'"x'],
        [b'"\\n"'],
        [b'"a"b"'],
        [b"a", b"b"],
    ],
)
def test_parse_key_refuses(values: list[bytes]) -> None:
    with pytest.raises(InvalidKey):
        parse_key(values)


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
    )
)
def test_any_printable_key_round_trips_as_a_quoted_string(key: str) -> None:
    quoted = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if key.strip(" \t") == key:
        assert parse_key([quoted.encode()]) == key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_fingerprint_ignores_json_formatting(value: object) -> None:
    compact = json.dumps(value, separators=(",", ":")).encode()
    spaced = json.dumps(value, indent=2, sort_keys=True).encode()
    fps = {
        fingerprint("POST", b"/x", body, parse_json_body(body, b"application/json"))
        for body in (compact, spaced)
    }
    assert len(fps) == 1


def test_fingerprint_distinguishes_method_target_and_body() -> None:
    body = b'{"a":1}'
    parsed = parse_json_body(body, None)
    base = fingerprint("POST", b"/x", body, parsed)
    assert fingerprint("post", b"/x", body, parsed) == base
    assert fingerprint("PUT", b"/x", body, parsed) != base
    assert fingerprint("POST", b"/x?q=1", body, parsed) != base
    assert fingerprint("POST", b"/x", b'{"a":2}', parse_json_body(b'{"a":2}', None)) != base
    assert fingerprint("POST", b"/x", b'{"a":1.0}', parse_json_body(b'{"a":1.0}', None)) == base
    # A body that is not JSON is compared by its bytes, and never equals a JSON one.
    assert fingerprint("POST", b"/x", body, NOT_JSON) != base


def test_ignored_fields_are_removed_at_any_depth() -> None:
    a = b'{"amount":1,"meta":{"trace":"x","keep":1},"at":5}'
    b = b'{"amount":1,"meta":{"trace":"y","keep":1},"at":6}'
    ignore = (("meta", "trace"), ("at",), ("missing", "deep"))
    fa = fingerprint("POST", b"/", a, parse_json_body(a, None), ignore)
    fb = fingerprint("POST", b"/", b, parse_json_body(b, None), ignore)
    assert fa == fb
    c = b'{"amount":1,"meta":{"trace":"y","keep":2},"at":6}'
    assert fingerprint("POST", b"/", c, parse_json_body(c, None), ignore) != fa


@pytest.mark.parametrize(
    ("body", "content_type", "is_json"),
    [
        (b'{"a":1}', b"application/json", True),
        (b'{"a":1}', b"application/vnd.api+json; charset=utf-8", True),
        (b'{"a":1}', None, True),
        (b'{"a":1}', b"text/plain", False),
        (b"not json", b"application/json", False),
        (b"", b"application/json", False),
        (b"[" * 100_000, None, False),
    ],
)
def test_parse_json_body(body: bytes, content_type: bytes | None, is_json: bool) -> None:
    assert (parse_json_body(body, content_type) is not NOT_JSON) == is_json


def test_policy_defaults_follow_the_issue() -> None:
    p = IdempotencyPolicy()
    assert p.methods == {"POST", "PATCH"}
    assert p.required
    assert p.ttl == 86400
    assert p.on_lease_expiry == "unknown"
    assert p.on_server_error == "release"
    assert p.wait == 0
    assert p.release_statuses == {408, 409, 425, 429, 503}
    assert IdempotencyPolicy(methods=["post", "put"]).methods == {"POST", "PUT"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 5}, "IdempotencyPolicy.ttl: expected seconds between 60 and 7776000"),
        ({"ttl": 91 * 86400}, "IdempotencyPolicy.ttl"),
        (
            {"lease": 0},
            "IdempotencyPolicy.lease: expected seconds greater than 0 and less than ttl",
        ),
        ({"lease": 100, "ttl": 100}, "IdempotencyPolicy.lease"),
        ({"methods": ["FETCH"]}, r"IdempotencyPolicy.methods: expected HTTP methods"),
        ({"methods": "POST"}, "IdempotencyPolicy.methods: expected a list"),
        ({"scope": "global"}, "IdempotencyPolicy.scope: expected 'principal' or 'principal_route'"),
        ({"on_lease_expiry": "retry"}, "IdempotencyPolicy.on_lease_expiry"),
        ({"on_server_error": "ignore"}, "IdempotencyPolicy.on_server_error"),
        ({"release_statuses": [200]}, "IdempotencyPolicy.release_statuses"),
        ({"wait": 120}, "IdempotencyPolicy.wait: expected seconds from 0 up to the lease"),
        ({"header": "Bad Header"}, "IdempotencyPolicy.header"),
        ({"ignore_fields": [""]}, "IdempotencyPolicy.ignore_fields"),
    ],
)
def test_policy_errors_name_the_field_and_what_is_expected(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        IdempotencyPolicy(**kwargs)  # type: ignore[arg-type]
