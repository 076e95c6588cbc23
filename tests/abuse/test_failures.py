"""``FailureRule``: what counts, who is counted, how long a ban lasts (pure, table-driven)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surefoot.abuse._bans import Kind
from surefoot.abuse._failures import MAX_ACCOUNT, AccountSource, FailureRule, account_hash, ban_time


@pytest.mark.parametrize(
    ("base", "offence", "factor", "maximum", "expected"),
    [
        (600, 1, 2, 86400, 600),
        (600, 2, 2, 86400, 1200),
        (600, 3, 2, 86400, 2400),
        (600, 10, 2, 86400, 86400),  # capped
        (600, 5, 1, 86400, 600),  # no growth
        (600, 0, 2, 86400, 600),
        (600, 10**6, 100, 3600, 3600),  # a huge offence never overflows
        (7200, 1, 2, 3600, 3600),  # the first ban is capped too
    ],
)
def test_ban_time_grows_by_the_factor_up_to_the_maximum(
    base: float, offence: int, factor: float, maximum: float, expected: float
) -> None:
    assert ban_time(base, offence, factor, maximum) == expected


@given(st.integers(1, 200), st.floats(1, 100), st.floats(1, 1e6))
def test_ban_time_never_shrinks_and_never_exceeds_the_maximum(
    offence: int, factor: float, maximum: float
) -> None:
    this, following = (
        ban_time(60, offence, factor, maximum),
        ban_time(60, offence + 1, factor, maximum),
    )
    assert this <= following <= maximum


def test_an_account_is_hashed_trimmed_and_case_folded() -> None:
    assert account_hash(" Alice ") == account_hash("alice")
    assert account_hash("alice").startswith("acct:")
    assert "alice" not in account_hash("alice")
    assert account_hash("alice", b"k") != account_hash("alice")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("cookie:x", "expected 'json:FIELD'"),
        ("json", "expected a name after 'json:'"),
        ("json:", "expected a name after 'json:'"),
        ("basic:user", "'basic' takes no name"),
    ],
)
def test_a_bad_account_source_says_what_is_expected(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AccountSource.parse(text)


def _basic(user: str, password: str = "pw") -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize(
    ("source", "headers", "query", "body", "expected"),
    [
        ("json:username", [], b"", json.dumps({"username": " alice "}).encode(), ("alice",)),
        ("json:username", [], b"", b'{"username": 7}', ()),  # not a string
        ("json:username", [], b"", b"[1]", ()),  # not an object
        ("json:username", [], b"", b'{"user": {"username": "x"}}', ()),  # nested: not it
        ("json:username", [], b"", b"{nope", ()),
        ("json:username", [], b"", b"\xff\xfe", ()),
        ("json:username", [], b"", b'{"username": ""}', ()),
        ("json:username", [], b"", json.dumps({"username": "a" * (MAX_ACCOUNT + 1)}).encode(), ()),
        ("json:username", [], b"", b'{"username": "a", "username": "b"}', ("a", "b")),
        ("json:username", [], b"", b'{"username": "a", "username": " a"}', ("a",)),
        ("form:login", [], b"", b"login=bob&password=x", ("bob",)),
        ("form:login", [], b"", b"password=x", ()),
        ("form:login", [], b"", b"login=%ff", ("\ufffd",)),  # replaced, still one account
        ("form:login", [], b"", b"\xff=1", ()),
        ("form:login", [], b"", b"login=decoy&login=victim", ("decoy", "victim")),
        ("query:user", [], b"user=carol", b"", ("carol",)),
        ("header:X-User", [(b"x-user", b"dave")], b"", b"", ("dave",)),
        ("header:X-User", [(b"x-user", b"dave"), (b"x-user", b"erin")], b"", b"", ("dave", "erin")),
        ("header:x-user", [(b"x-other", b"dave")], b"", b"", ()),
        ("basic", [(b"authorization", _basic("erin"))], b"", b"", ("erin",)),
        ("basic", [(b"authorization", b"Bearer abc")], b"", b"", ()),
        ("basic", [(b"authorization", b"Basic !!!")], b"", b"", ()),
        ("basic", [(b"authorization", b"Basic " + base64.b64encode(b"nocolon"))], b"", b"", ()),
        ("basic", [(b"authorization", b"Basic " + base64.b64encode(b"\xff:x"))], b"", b"", ()),
        ("basic", [(b"x-api-key", b"k")], b"", b"", ()),
    ],
)
def test_every_account_named_is_read_where_the_source_says(
    source: str,
    headers: list[tuple[bytes, bytes]],
    query: bytes,
    body: bytes,
    expected: tuple[str, ...],
) -> None:
    assert AccountSource.parse(source).extract(headers, query, body) == expected


def test_only_json_and_form_sources_read_the_body() -> None:
    assert [
        AccountSource.parse(s).reads_body for s in ("json:a", "form:a", "query:a", "basic")
    ] == [
        True,
        True,
        False,
        False,
    ]
    assert str(AccountSource.parse("header:X-User")) == "header:x-user"
    assert str(AccountSource.parse("basic")) == "basic"


def _rule(by: Kind, **options: object) -> FailureRule:
    return FailureRule("login", ("POST /login",), by, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("by", "address", "expected"),
    [
        (Kind.ADDRESS, "203.0.113.7", "203.0.113.7"),
        (Kind.ADDRESS, "::ffff:203.0.113.7", "203.0.113.7"),
        (Kind.ADDRESS, "unknown", None),
        (Kind.NETWORK, "203.0.113.7", "203.0.113.0/24"),
        (Kind.NETWORK, "2001:db8::1", "2001:db8::/64"),
        (Kind.NETWORK, "not-an-address", None),
        (Kind.NETWORK, "fe80::1%eth0", None),
        (Kind.PRINCIPAL, "203.0.113.7", "cred:abc"),
        (Kind.ACCOUNT, "203.0.113.7", "acct:x"),
    ],
)
def test_the_subject_counted_is_the_rule_s(by: Kind, address: str, expected: str | None) -> None:
    assert _rule(by).subject(address, "cred:abc", "acct:x") == expected


def test_an_account_rule_without_an_account_counts_nothing() -> None:
    assert _rule(Kind.ACCOUNT).subject("203.0.113.7", "cred:abc", None) is None


@pytest.mark.parametrize(
    ("remaining", "allowed", "expected"),
    [
        (4, True, None),  # 1st failure of 5
        (2, True, "challenge"),  # 3rd: challenge_after
        (1, True, "challenge"),
        (0, True, "ban"),  # the 5th: the threshold
        (0, False, "ban"),  # past it (another worker's failure, or a late one)
    ],
)
def test_the_verdict_follows_the_count(remaining: int, allowed: bool, expected: str | None) -> None:
    rule = _rule(Kind.ADDRESS, threshold=5, challenge_after=3)
    assert rule.verdict(remaining, allowed) == expected
    assert _rule(Kind.ADDRESS, threshold=5).verdict(1, True) is None  # no challenge step


def test_a_rule_counts_its_statuses_and_names_its_counter() -> None:
    rule = _rule(Kind.ADDRESS, statuses=frozenset({401}), ban=60, ban_factor=3, ban_max=500)
    assert rule.counts(401)
    assert not rule.counts(403)
    assert not rule.counts(200)
    assert rule.counter("203.0.113.7") == "abuse:login:203.0.113.7"
    assert rule.counter("203.0.113.7", 1700000000.4) == "abuse:login:203.0.113.7@1700000000"
    assert [rule.ban_for(n) for n in (1, 2, 3)] == [60, 180, 500]
