"""The ban set: subjects, precedence, the wire format, a reference model, O(1) lookups.

The reference model is a list of entries scanned linearly with ``ipaddress`` containment;
``match()`` must return the very entry it picks (Rule 3's order included). The O(1)
test counts the dict probes a ``match()`` makes through a counting ``dict`` subclass
(``BanSet._new_table``), so the production path stays plain dicts.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.abuse._bans import (
    MAX_REASON,
    Action,
    BanSet,
    Entry,
    Kind,
    network_of,
    overlaps,
    subject,
)

INF = math.inf
NOW = 100.0
PRECEDENCE = [Action.ALLOW, Action.BAN, Action.LIMIT, Action.CHALLENGE]


def entry(action: Action, kind: Kind, value: str, until: float = INF, **kw: Any) -> Entry:
    if action is Action.LIMIT:
        kw.setdefault("rate", 5.0)
    return Entry(action, kind, value, until, **kw)


A, B, L, C = Action.ALLOW, Action.BAN, Action.LIMIT, Action.CHALLENGE
ADDR, NET, PRIN, ACCT = Kind.ADDRESS, Kind.NETWORK, Kind.PRINCIPAL, Kind.ACCOUNT


# --- subject ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "canonical"),
    [
        (ADDR, "203.0.113.7", "203.0.113.7"),
        (ADDR, "2001:DB8:0:0::7", "2001:db8::7"),
        (ADDR, "::ffff:203.0.113.7", "203.0.113.7"),
        (ADDR, "::FFFF:cb00:7107", "203.0.113.7"),
        (ADDR, "::1", "::1"),
        ("address", "198.51.100.1", "198.51.100.1"),
        (NET, "203.0.113.0/24", "203.0.113.0/24"),
        (NET, "2001:DB8::/48", "2001:db8::/48"),
        (NET, "203.0.113.7/32", "203.0.113.7/32"),
        (NET, "2001:db8::1/128", "2001:db8::1/128"),
        (NET, "203.0.113.7", "203.0.113.7/32"),
        (NET, "10.0.0.0/255.0.0.0", "10.0.0.0/8"),
        (NET, "2001:db8::/96", "2001:db8::/96"),
        (NET, "::/0", "::/0"),
        ("network", "0.0.0.0/0", "0.0.0.0/0"),
        (PRIN, "user:alice", "user:alice"),
        (PRIN, "cred:" + "a" * 251, "cred:" + "a" * 251),
        (ACCT, "acct:0f1e", "acct:0f1e"),
        ("account", "!~", "!~"),
    ],
)
def test_subject_canonical(kind: Kind | str, value: str, canonical: str) -> None:
    assert subject(kind, value) == canonical
    assert subject(kind, canonical) == canonical


@pytest.mark.parametrize(
    ("kind", "value", "fragments"),
    [
        (ADDR, "203.0.113.256", ["expected an IP address", "'203.0.113.256'"]),
        (ADDR, "", ["expected an IP address"]),
        (ADDR, " 203.0.113.7", ["expected an IP address"]),
        (ADDR, "203.0.113.0/24", ["expected an IP address"]),
        (ADDR, "fe80::1%eth0", ["zone id"]),
        (NET, "203.0.113.7/24", ["host bits", "did you mean 203.0.113.0/24?"]),
        (NET, "2001:db8::1/64", ["host bits", "did you mean 2001:db8::/64?"]),
        (NET, "10.0.0.0/33", ["CIDR notation", "'10.0.0.0/33'"]),
        (NET, "300.0.0.0/8", ["CIDR notation"]),
        (NET, "", ["CIDR notation"]),
        (NET, "::ffff:203.0.113.0/120", ["IPv4-mapped", "write it as 203.0.113.0/24"]),
        (NET, "::ffff:0:0/96", ["IPv4-mapped", "write it as 0.0.0.0/0"]),
        (NET, "fe80::%eth0/64", ["zone id"]),
        (PRIN, "", ["principal of 1 to 256 printable ASCII"]),
        (PRIN, "user alice", ["without spaces"]),
        (PRIN, "x" * 257, ["1 to 256", "..."]),
        (PRIN, "user:\u00e9", ["printable ASCII"]),
        (PRIN, "user:\x00", ["printable ASCII"]),
        (ACCT, "acct: x", ["account of 1 to 256"]),
        ("host", "203.0.113.7", ["expected a kind among address, network, principal, account"]),
        (PRIN, 5, ["value must be a string, got int"]),
        (5, "x", ["kind must be a string"]),
    ],
)
def test_subject_errors(kind: Any, value: Any, fragments: list[str]) -> None:
    with pytest.raises(ValueError, match=re.escape(fragments[0])) as info:
        subject(kind, value)
    message = str(info.value)
    for fragment in fragments[1:]:
        assert fragment in message
    assert len(message) < 300  # user input is quoted cut short


_IPISH = (
    st.text(alphabet="0123456789abcdefABCDEF.:%/ x\u0661", max_size=24)
    | st.ip_addresses().map(str)
    | st.ip_addresses(v=4).map(lambda ip: f"::ffff:{ip}")
    | st.ip_addresses(v=4).map(lambda ip: f"{ip}".replace(".", ".0", 1))
    | st.ip_addresses(v=6).map(lambda ip: f"{ip.exploded}%eth0")
)


@given(_IPISH)
def test_addresses_are_read_as_ipaddress_reads_them(text: str) -> None:
    """The canonical form and the client-address lookup agree with ``ipaddress``."""
    try:
        ip: Any = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    canonical = None if ip is None else type(ip)(int(ip)).compressed  # without a zone id
    if ip is None or "%" in text:
        with pytest.raises(ValueError, match=r"IP address|zone id"):
            subject(ADDR, text)
    else:
        assert subject(ADDR, text) == canonical
    bans = BanSet()
    for net in ("0.0.0.0/0", "::/0"):
        bans.put(entry(L, NET, net))
    if canonical is not None:
        bans.put(entry(B, ADDR, canonical))
    found = bans.match(NOW, text)
    assert (found.slot if found else None) == (canonical and f"ban address {canonical}")


@pytest.mark.parametrize(
    ("address", "v4", "v6", "network"),
    [
        ("203.0.113.7", 24, 64, "203.0.113.0/24"),
        ("203.0.113.7", 32, 128, "203.0.113.7/32"),
        ("203.0.113.7", 0, 64, "0.0.0.0/0"),
        ("2001:db8:1:2:3::4", 24, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3::4", 24, 48, "2001:db8:1::/48"),
        ("::ffff:203.0.113.7", 16, 64, "203.0.0.0/16"),
    ],
)
def test_network_of(address: str, v4: int, v6: int, network: str) -> None:
    assert network_of(address, v4, v6) == network
    assert subject(NET, network) == network


@pytest.mark.parametrize(
    ("address", "v4", "v6", "fragment"),
    [
        ("203.0.113", 24, 64, "expected an IP address"),
        ("203.0.113.7", 33, 64, "IPv4 prefix length is 0 to 32, got 33"),
        ("203.0.113.7", -1, 64, "IPv4 prefix length"),
        ("2001:db8::1", 24, 129, "IPv6 prefix length is 0 to 128, got 129"),
    ],
)
def test_network_of_errors(address: str, v4: int, v6: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        network_of(address, v4, v6)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((ADDR, "203.0.113.7"), (ADDR, "203.0.113.7"), True),
        ((ADDR, "203.0.113.7"), (ADDR, "203.0.113.8"), False),
        ((ADDR, "203.0.113.7"), (NET, "203.0.113.0/24"), True),
        ((NET, "203.0.113.0/24"), (ADDR, "203.0.113.7"), True),
        ((NET, "203.0.113.0/24"), (ADDR, "203.0.114.7"), False),
        ((NET, "203.0.113.0/24"), (NET, "203.0.0.0/16"), True),
        ((NET, "203.0.113.0/25"), (NET, "203.0.113.128/25"), False),
        ((NET, "203.0.113.0/24"), (NET, "203.0.113.0/24"), True),
        ((NET, "0.0.0.0/0"), (NET, "::/0"), False),
        ((ADDR, "203.0.113.7"), (NET, "::/0"), False),
        ((ADDR, "2001:db8::7"), (NET, "2001:db8::/64"), True),
        ((NET, "2001:db8::/64"), (NET, "2001:db8:0:1::/64"), False),
        ((PRIN, "user:alice"), (PRIN, "user:alice"), True),
        ((PRIN, "user:alice"), (PRIN, "user:bob"), False),
        ((PRIN, "user:alice"), (ACCT, "user:alice"), False),
        ((ACCT, "acct:1"), (ACCT, "acct:1"), True),
        ((PRIN, "user:alice"), (ADDR, "203.0.113.7"), False),
        ((ADDR, "203.0.113.7"), (PRIN, "user:alice"), False),
    ],
)
def test_overlaps(a: tuple[Kind, str], b: tuple[Kind, str], expected: bool) -> None:
    ea, eb = entry(B, *a), entry(A, *b)  # the actions do not matter
    assert overlaps(ea, eb) is expected
    assert overlaps(eb, ea) is expected


# --- Entry ------------------------------------------------------------------------------


def test_entry_canonicalises_and_coerces() -> None:
    e = Entry("ban", "address", "::ffff:203.0.113.7", 5)  # type: ignore[arg-type]
    assert (e.action, e.kind, e.value, e.until) == (B, ADDR, "203.0.113.7", 5.0)
    assert (type(e.action), type(e.kind), type(e.until)) == (Action, Kind, float)
    assert e.slot == "ban address 203.0.113.7"
    assert e == entry(B, ADDR, "203.0.113.7", 5.0)
    assert [e.active(t) for t in (4.999, 5.0, 6.0)] == [True, False, False]
    assert entry(B, ADDR, "203.0.113.7").active(1e300)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"action": "nuke"}, "expected an action among allow, ban, limit, challenge"),
        ({"action": 1}, "action must be a string"),
        ({"kind": "host"}, "expected a kind among"),
        ({"value": "203.0.113.7/24", "kind": NET}, "did you mean 203.0.113.0/24"),
        ({"until": math.nan}, "until must be a finite number or math.inf"),
        ({"until": -INF}, "until must be a finite number or math.inf"),
        ({"until": "5"}, "until must be a number, got str"),
        ({"until": True}, "until must be a number, got bool"),
        ({"until": 10**400}, "until is too large"),
        ({"at": INF}, "at must be a finite number, got inf"),
        ({"forget_at": math.nan}, "forget_at must be"),
        ({"rate": -1.0}, "rate must be above 0"),
        ({"rate": INF}, "rate must be a finite number"),
        ({"action": L, "rate": 0.0}, "a limit's rate must be above 0"),
        ({"reason": "x" * (MAX_REASON + 1)}, "a reason is at most 200 characters, got 201"),
        ({"reason": None}, "reason must be a string"),
        ({"source": ""}, "a source is 1 to 100 characters, got 0"),
        ({"source": "s" * 101}, "a source is 1 to 100 characters"),
        ({"offence": 0}, "offence must be an integer of 1 or more, got 0"),
        ({"offence": True}, "offence must be an integer"),
        ({"offence": 1.0}, "offence must be an integer"),
    ],
)
def test_entry_refuses(kw: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"action": B, "kind": ADDR, "value": "203.0.113.7", "until": 5.0}
    fields.update(kw)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Entry(**fields)


def test_entry_accepts_edges() -> None:
    e = Entry(L, ADDR, "203.0.113.7", INF, "r" * MAX_REASON, "s" * 100, -5.0, 2**70, 1e-9, INF)
    assert Entry.decode(e.encode()) == e
    assert entry(C, PRIN, "user:a", 1.0, rate=0.0).rate == 0.0
    assert entry(B, ADDR, "203.0.113.7", 7).until == 7.0  # an int, as a float


def test_encode_is_compact_and_stable() -> None:
    e = entry(B, NET, "203.0.113.0/24", INF, reason="brute force", source="failures:login")
    assert e.encode() == (
        b'{"action":"ban","at":0.0,"forget_at":0.0,"kind":"network","offence":1,"rate":0.0,'
        b'"reason":"brute force","source":"failures:login","until":null,"v":1,'
        b'"value":"203.0.113.0/24"}'
    )
    lone = entry(B, ADDR, "203.0.113.7", reason="\ud800 \u00e9")  # encodable whatever the text
    assert Entry.decode(lone.encode()) == lone
    assert lone.encode().isascii()


def _valid() -> dict[str, Any]:
    return dict(json.loads(entry(B, ADDR, "203.0.113.7", 5.0, forget_at=9.0).encode()))


def _with(**kw: Any) -> bytes:
    obj = _valid()
    obj.update(kw)
    return json.dumps(obj).encode()


def _without(key: str) -> bytes:
    obj = _valid()
    del obj[key]
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not an encoded entry"),
        (b"\xff\xfe\xfd", "not an encoded entry"),
        (b"{", "not an encoded entry"),
        (b"[" * 100_000 + b"]" * 100_000, "at most 8192 bytes"),
        (b"[" * 4000 + b"]" * 4000, "not an encoded entry"),
        (b"[]", "is a JSON object, got list"),
        (b"null", "is a JSON object, got NoneType"),
        (b'{"v":1}', "has the keys"),
        (_with(extra=1), "has the keys"),
        (_without("forget_at"), "has the keys"),
        (_with(v=2), "format 1"),
        (_with(v=True), "format 1"),
        (_with(v=1.0), "format 1"),
        (_with(until="inf"), "until must be a number"),
        (_with(until=10**400), "until is too large"),
        (b'{"until":' + b"1" * 5000 + b"}", "not an encoded entry"),  # Python's digits limit
        (_with(action="nuke"), "expected an action"),
        (_with(action=["ban"]), "action must be a string"),
        (_with(kind={}), "kind must be a string"),
        (_with(value="203.0.113.0/24"), "expected an IP address"),
        (_with(value=None), "value must be a string"),
        (_with(offence=1.0), "offence must be an integer"),
        (_with(offence=True), "offence must be an integer"),
        (_with(at=None), "at must be a number, got NoneType"),
        (_with(reason=5), "reason must be a string"),
        (b'{"until":NaN}', "NaN is not a number an entry holds"),
        (b'{"until":-Infinity}', "not a number an entry holds"),
        (b'{"until":1e999}', "1e999 is out of range"),
    ],
)
def test_decode_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Entry.decode(data)


def _finite() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False)


def _networks(version: Literal[4, 6]) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda ip, prefix: ipaddress.ip_network((ip, prefix), strict=False).with_prefixlen,
        st.ip_addresses(v=version),
        st.integers(0, bits),
    ).filter(lambda n: not n.startswith("::ffff:"))


_NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind = draw(st.sampled_from(Kind))
    if kind is ADDR:
        value = str(draw(st.ip_addresses()))
    elif kind is NET:
        value = draw(_networks(4) | _networks(6))
    else:
        value = draw(_NAME)
    action = draw(st.sampled_from(Action))
    low = 1e-9 if action is L else 0.0
    return Entry(
        action,
        kind,
        value,
        until=draw(_finite() | st.just(INF)),
        reason=draw(st.text(max_size=MAX_REASON)),
        source=draw(st.text(min_size=1, max_size=100)),
        at=draw(_finite()),
        offence=draw(st.integers(1, 2**80)),
        rate=draw(st.floats(low, 1e12)),
        forget_at=draw(_finite() | st.just(INF)),
    )


@given(entries())
def test_encode_decode_round_trip(e: Entry) -> None:
    data = e.encode()
    assert Entry.decode(data) == e
    assert Entry.decode(data).encode() == data
    assert len(data) <= 8192


def _decodes_or_value_error(data: bytes) -> None:
    try:
        e = Entry.decode(data)
    except ValueError:
        return
    assert Entry.decode(e.encode()) == e


@given(st.binary(max_size=400))
def test_decode_junk_bytes_raises_value_error_only(data: bytes) -> None:
    _decodes_or_value_error(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _finite() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


@given(_JSON)
def test_decode_arbitrary_json_raises_value_error_only(obj: Any) -> None:
    _decodes_or_value_error(json.dumps(obj).encode())


@given(entries(), st.sampled_from(sorted(_valid())), _JSON)
def test_decode_mutated_entry_raises_value_error_only(e: Entry, key: str, junk: Any) -> None:
    obj = json.loads(e.encode())
    obj[key] = junk
    _decodes_or_value_error(json.dumps(obj).encode())


# --- match: precedence ------------------------------------------------------------------

V4 = "203.0.113.7"
V6 = "2001:db8:0:1::abcd"
Case = tuple[list[Entry], dict[str, Any], str | None]

MATCH_CASES: dict[str, Case] = {
    "empty set": ([], {"address": V4}, None),
    "no match": ([entry(B, ADDR, "198.51.100.1")], {"address": V4}, None),
    "no request subject": ([entry(B, ADDR, V4)], {}, None),
    "address ban": ([entry(B, ADDR, V4)], {"address": V4}, "ban address 203.0.113.7"),
    "allow beats ban on the same address": (
        [entry(B, ADDR, V4), entry(A, ADDR, V4)],
        {"address": V4},
        "allow address 203.0.113.7",
    ),
    "allow network beats a ban on an address inside it": (
        [entry(B, ADDR, V4), entry(A, NET, "203.0.113.0/24")],
        {"address": V4},
        "allow network 203.0.113.0/24",
    ),
    "allow principal beats an address ban": (
        [entry(B, ADDR, V4), entry(A, PRIN, "user:ops")],
        {"address": V4, "principals": ["user:ops"]},
        "allow principal user:ops",
    ),
    "allow account beats a network ban": (
        [entry(B, NET, "203.0.0.0/16"), entry(A, ACCT, "acct:1")],
        {"address": V4, "accounts": ["acct:1"]},
        "allow account acct:1",
    ),
    "ban beats limit beats challenge": (
        [entry(C, PRIN, "user:a"), entry(L, NET, "203.0.113.0/24"), entry(B, ACCT, "acct:1")],
        {"address": V4, "principals": ["user:a"], "accounts": ["acct:1"]},
        "ban account acct:1",
    ),
    "limit beats challenge": (
        [entry(C, ADDR, V4), entry(L, PRIN, "user:a")],
        {"address": V4, "principals": ["user:a"]},
        "limit principal user:a",
    ),
    "challenge alone": ([entry(C, ADDR, V4)], {"address": V4}, "challenge address 203.0.113.7"),
    "expired ban ignored": (
        [entry(B, ADDR, V4, until=NOW), entry(L, ADDR, V4, until=NOW + 1)],
        {"address": V4},
        "limit address 203.0.113.7",
    ),
    "expired allow ignored": (
        [entry(A, NET, "203.0.113.0/24", until=NOW - 1), entry(B, ADDR, V4)],
        {"address": V4},
        "ban address 203.0.113.7",
    ),
    "everything expired": ([entry(B, ADDR, V4, until=1.0)], {"address": V4}, None),
    "IPv4-mapped client, IPv4 ban": (
        [entry(B, ADDR, V4)],
        {"address": "::ffff:203.0.113.7"},
        "ban address 203.0.113.7",
    ),
    "IPv4-mapped client, IPv4 network": (
        [entry(B, NET, "203.0.113.0/24")],
        {"address": "::ffff:cb00:7107"},
        "ban network 203.0.113.0/24",
    ),
    "IPv6 /64": (
        [entry(B, NET, "2001:db8:0:1::/64")],
        {"address": V6},
        "ban network 2001:db8:0:1::/64",
    ),
    "IPv6 /64, outside": (
        [entry(B, NET, "2001:db8:0:1::/64")],
        {"address": "2001:db8:0:2::1"},
        None,
    ),
    "IPv6 address": (
        [entry(B, ADDR, V6)],
        {"address": V6.upper()},
        "ban address 2001:db8:0:1::abcd",
    ),
    "IPv4 client, IPv6 everything": ([entry(B, NET, "::/0")], {"address": V4}, None),
    "IPv6 client, IPv4 everything": ([entry(B, NET, "0.0.0.0/0")], {"address": V6}, None),
    "unparsable address": ([entry(B, NET, "0.0.0.0/0")], {"address": "not-an-ip"}, None),
    "unparsable address, principal still checked": (
        [entry(B, NET, "0.0.0.0/0"), entry(L, PRIN, "user:a")],
        {"address": "203.0.113.7:443", "principals": ["user:a"]},
        "limit principal user:a",
    ),
    "principal": (
        [entry(B, PRIN, "user:alice")],
        {"principals": ("user:bob", "user:alice")},
        "ban principal user:alice",
    ),
    "principal is not an account": (
        [entry(B, PRIN, "user:alice")],
        {"accounts": ["user:alice"]},
        None,
    ),
    "account": ([entry(B, ACCT, "acct:9f")], {"accounts": ("acct:9f",)}, "ban account acct:9f"),
    "same action: the address before networks": (
        [entry(B, NET, "203.0.113.0/24"), entry(B, ADDR, V4)],
        {"address": V4},
        "ban address 203.0.113.7",
    ),
    "same action: the longest prefix first": (
        [
            entry(B, NET, "203.0.0.0/16"),
            entry(B, NET, "203.0.113.0/24"),
            entry(B, NET, "0.0.0.0/0"),
        ],
        {"address": V4},
        "ban network 203.0.113.0/24",
    ),
    "same action: principals in the order given": (
        [entry(B, PRIN, "user:a"), entry(B, PRIN, "user:b"), entry(B, ACCT, "acct:1")],
        {"principals": ["user:b", "user:a"], "accounts": ["acct:1"]},
        "ban principal user:b",
    ),
    "a /32 network is a network": (
        [entry(L, NET, "203.0.113.7/32")],
        {"address": V4},
        "limit network 203.0.113.7/32",
    ),
    "zone id of a client address ignored": (
        [entry(B, ADDR, "fe80::1")],
        {"address": "fe80::1%eth0"},
        "ban address fe80::1",
    ),
}


@pytest.mark.parametrize(("given_", "request_", "expected"), MATCH_CASES.values(), ids=MATCH_CASES)
def test_match(given_: list[Entry], request_: dict[str, Any], expected: str | None) -> None:
    bans = BanSet()
    for e in given_:
        bans.put(e)
    found = bans.match(NOW, **request_)
    assert (found.slot if found else None) == expected


# --- the rest of the API ----------------------------------------------------------------


def test_put_get_remove_len() -> None:
    bans = BanSet()
    ban = entry(B, ADDR, V4, 10.0, offence=1)
    assert bans.put(ban) is None
    again = entry(B, ADDR, V4, 50.0, offence=2)
    assert bans.put(again) is ban  # replaced: the caller reads the offence history
    assert len(bans) == 1
    assert bans.get(ban.slot) is again
    allow = entry(A, ADDR, V4)
    assert bans.put(allow) is None
    assert len(bans) == 2
    assert bans.match(NOW, V4) is allow
    assert bans.remove(allow.slot) is allow
    assert bans.match(20.0, V4) is again  # the ban of the same subject is still there
    assert bans.remove(allow.slot) is None
    assert bans.remove("ban address 198.51.100.1") is None
    assert bans.get("nothing") is None
    assert bans.remove(again.slot) is again
    assert len(bans) == 0
    assert bans.match(0.0, V4) is None


def test_remove_forgets_empty_records_and_prefix_lengths() -> None:
    bans = ProbedBanSet()
    nets = ["203.0.113.0/24", "203.0.114.0/24", "203.0.0.0/16", "2001:db8::/48", "2001:db8::/64"]
    for net in nets:
        bans.put(entry(B, NET, net))
    assert bans.match(NOW, "203.0.114.1").value == "203.0.114.0/24"  # type: ignore[union-attr]
    assert probes(bans, "198.51.100.1") == (None, 1 + 2)  # the address, /24, /16
    bans.remove(f"ban network {nets[1]}")
    assert bans.match(NOW, "203.0.114.1").value == "203.0.0.0/16"  # type: ignore[union-attr]
    assert probes(bans, "198.51.100.1") == (None, 1 + 2)  # a /24 is left
    bans.remove(f"ban network {nets[2]}")  # the last /16: the length is no longer probed
    assert probes(bans, "198.51.100.1") == (None, 1 + 1)
    assert bans.match(NOW, "203.0.114.1") is None
    assert bans.match(NOW, "203.0.113.1").value == "203.0.113.0/24"  # type: ignore[union-attr]
    bans.remove("ban network 2001:db8::/64")
    assert bans.match(NOW, "2001:db8::1").value == "2001:db8::/48"  # type: ignore[union-attr]
    assert probes(bans, "2001:db9::1") == (None, 1 + 1)
    bans.remove("ban network 2001:db8::/48")
    assert probes(bans, "2001:db9::1") == (None, 1 + 0)
    for kind, value in [(PRIN, "user:a"), (ACCT, "acct:1"), (ADDR, "2001:db8::1")]:
        bans.put(entry(C, kind, value))
        assert bans.remove(f"challenge {kind} {value}") is not None
    assert probes(bans, "2001:db8::1", ["user:a"], ["acct:1"]) == (None, 1 + 1 + 1)
    assert len(bans) == 1
    assert [len(bans._addr6), len(bans._principals), len(bans._accounts)] == [0, 0, 0]


def _filled() -> BanSet:
    bans = BanSet()
    for e in [
        entry(B, ADDR, V4, 10.0),
        entry(B, NET, "203.0.113.0/24", 20.0, forget_at=100.0),
        entry(L, PRIN, "user:a", INF),
        entry(C, ACCT, "acct:1", 5.0, forget_at=1.0),
        entry(A, ADDR, "198.51.100.1", INF),
        entry(B, ADDR, "2001:db8::1", 30.0),
    ]:
        bans.put(e)
    return bans


def test_entries_listing() -> None:
    bans = _filled()
    slots = [e.slot for e in bans.entries()]
    assert slots == [
        "allow address 198.51.100.1",
        "ban address 2001:db8::1",
        "ban address 203.0.113.7",
        "ban network 203.0.113.0/24",
        "challenge account acct:1",
        "limit principal user:a",
    ]
    assert [e.slot for e in bans.entries(15.0)] == [
        "allow address 198.51.100.1",
        "ban address 2001:db8::1",
        "ban network 203.0.113.0/24",
        "limit principal user:a",
    ]
    assert len(bans.entries(15.0, active=False)) == 6
    assert [e.value for e in bans.entries(15.0, action=B)] == ["2001:db8::1", "203.0.113.0/24"]
    assert [e.value for e in bans.entries(kind=ADDR, action=B)] == ["2001:db8::1", V4]
    assert bans.entries(15.0, kind=ACCT) == []
    assert [e.value for e in bans.entries(15.0, kind=ACCT, active=False)] == ["acct:1"]


def test_counts() -> None:
    counts = _filled().counts(15.0)
    assert len(counts) == 16
    assert {key: n for key, n in counts.items() if n} == {
        ("ban", "address"): 1,
        ("ban", "network"): 1,
        ("allow", "address"): 1,
        ("limit", "principal"): 1,
    }
    assert all(type(a) is str and type(k) is str for a, k in counts)


def test_purge() -> None:
    bans = _filled()
    assert bans.purge(4.0) == 0
    assert bans.purge(5.0) == 1  # acct:1: until 5 (forget_at 1 does not keep it longer)
    assert bans.purge(30.0) == 2  # V4 at 10, 2001:db8::1 at 30; the /24 is kept as history
    assert bans.get("ban network 203.0.113.0/24") is not None
    assert bans.match(30.0, V4) is None  # kept, not active
    assert len(bans) == 3
    assert bans.purge(100.0) == 1
    assert [e.value for e in bans.entries()] == ["198.51.100.1", "user:a"]
    assert bans.purge(1e300) == 0


# --- the reference model ----------------------------------------------------------------

U_ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "192.0.2.5", "2001:db8::1", "2001:db8:0:1::1"]
U_NETS = [
    "0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/24", "10.0.0.0/30", "10.0.0.1/32",
    "10.0.1.0/24", "192.0.2.0/24", "::/0", "2001:db8::/32", "2001:db8::/48", "2001:db8::/64",
    "2001:db8:0:1::/64", "2001:db8::1/128",
]  # fmt: skip
U_NAMES = ["user:alice", "user:bob", "cred:x", "acct:1"]
U_CLIENTS = [
    *U_ADDRS, "::ffff:10.0.0.1", "::ffff:192.0.2.5", "10.0.0.3", "2001:db8::2", "2001:db8:1::1",
    "not-an-ip", None,
]  # fmt: skip
U_TIMES = [0.0, 5.0, 7.0, 10.0, 20.0]

_subjects = (
    st.tuples(st.just(ADDR), st.sampled_from(U_ADDRS))
    | st.tuples(st.just(NET), st.sampled_from(U_NETS))
    | st.tuples(st.sampled_from([PRIN, ACCT]), st.sampled_from(U_NAMES))
)
_u_entries = st.builds(
    lambda action, kv, until, forget: entry(action, kv[0], kv[1], until, forget_at=forget),
    st.sampled_from(Action),
    _subjects,
    st.sampled_from([5.0, 10.0, INF]),
    st.sampled_from([0.0, 15.0]),
)
_names = st.lists(st.sampled_from(U_NAMES), max_size=3)
_ops = st.lists(
    st.tuples(st.just("put"), _u_entries)
    | st.tuples(st.just("remove"), _u_entries.map(lambda e: e.slot))
    | st.tuples(st.just("purge"), st.sampled_from(U_TIMES))
    | st.tuples(
        st.just("match"), st.sampled_from(U_TIMES), st.sampled_from(U_CLIENTS), _names, _names
    ),
    max_size=60,
)


def reference_match(
    entries: list[Entry],
    now: float,
    address: str | None,
    principals: list[str],
    accounts: list[str],
) -> Entry | None:
    """Rule 3, by brute force: every active entry that matches, the best one wins."""
    ip: Any = None
    if address is not None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    found: list[tuple[int, tuple[int, int], Entry]] = []
    for e in entries:
        if not now < e.until:
            continue
        if e.kind is ADDR and ip is not None and ipaddress.ip_address(e.value) == ip:
            order = (0, 0)
        elif e.kind is NET and ip is not None and ip in ipaddress.ip_network(e.value):
            order = (1, -ipaddress.ip_network(e.value).prefixlen)
        elif e.kind is PRIN and e.value in principals:
            order = (2, principals.index(e.value))
        elif e.kind is ACCT and e.value in accounts:
            order = (3, accounts.index(e.value))
        else:
            continue
        found.append((PRECEDENCE.index(e.action), order, e))
    return min(found, key=lambda f: f[:2])[2] if found else None


@settings(max_examples=300)
@given(_ops)
def test_against_reference_model(ops: list[tuple[Any, ...]]) -> None:
    bans = BanSet()
    model: dict[str, Entry] = {}
    for op in ops:
        if op[0] == "put":
            assert bans.put(op[1]) == model.get(op[1].slot)
            model[op[1].slot] = op[1]
        elif op[0] == "remove":
            assert bans.remove(op[1]) == model.pop(op[1], None)
        elif op[0] == "purge":
            gone = [s for s, e in model.items() if op[1] >= max(e.until, e.forget_at)]
            for s in gone:
                del model[s]
            assert bans.purge(op[1]) == len(gone)
        else:
            _, now, address, principals, accounts = op
            expected = reference_match(list(model.values()), now, address, principals, accounts)
            assert bans.match(now, address, principals, accounts) == expected
        assert len(bans) == len(model)
    assert bans.entries() == sorted(model.values(), key=lambda e: (e.action, e.kind, e.value))


# --- O(1) -------------------------------------------------------------------------------


class CountingDict(dict[Any, Any]):
    """A dict that counts lookups, and every key visited by a scan."""

    probes = 0

    def get(self, key: Any, default: Any = None) -> Any:
        CountingDict.probes += 1
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        CountingDict.probes += 1
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        CountingDict.probes += 1
        return super().__contains__(key)

    def __iter__(self) -> Iterator[Any]:
        CountingDict.probes += len(self)
        return super().__iter__()

    def keys(self) -> Any:
        CountingDict.probes += len(self)
        return super().keys()

    def values(self) -> Any:
        CountingDict.probes += len(self)
        return super().values()

    def items(self) -> Any:
        CountingDict.probes += len(self)
        return super().items()


class ProbedBanSet(BanSet):
    _new_table = CountingDict


class LinearBanSet(ProbedBanSet):
    """What the O(1) test must catch: networks scanned instead of probed."""

    def match(self, now: float, address: str | None = None, *args: Any, **kw: Any) -> Entry | None:
        if address is not None:
            ip = ipaddress.ip_address(address)
            for _mask, table in self._probe4 if ip.version == 4 else self._probe6:
                for record in table.values():
                    for e in record:
                        if e is not None and ip in ipaddress.ip_network(e.value):
                            return e
        return super().match(now, address, *args, **kw)


V4_PREFIXES = range(16, 33)
V6_PREFIXES = range(48, 65)


def _network_at(j: int, prefix: int, version: int) -> str:
    """The j-th network of that length (distinct for distinct j), apart from the probes."""
    spread = (j * 7919) % (1 << (prefix - 2 if version == 4 else prefix - 36))  # odd: a bijection
    if version == 4:  # inside 64.0.0.0/2
        ip: Any = ipaddress.IPv4Address((1 << 30) | spread << (32 - prefix))
    else:  # inside 2001:db8:1000::/36
        ip = ipaddress.IPv6Address((0x20010DB81 << 92) | spread << (128 - prefix))
    return ipaddress.ip_network((ip, prefix)).with_prefixlen


def _build(cls: type[BanSet], addresses: int, networks: int) -> BanSet:
    """A set with every prefix length of V4_PREFIXES and V6_PREFIXES, at least once."""
    bans = cls()
    for i in range(addresses):
        if i % 100:  # 1% IPv6: its canonical form costs three times as much
            value = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        else:
            value = f"2001:db8:ffff::{i >> 16:x}:{i & 0xFFFF:x}"
        bans.put(Entry(B, ADDR, value, INF))
    lengths = [(p, 4) for p in V4_PREFIXES] + [(p, 6) for p in V6_PREFIXES]
    for i in range(networks):
        prefix, version = lengths[i % len(lengths)]
        bans.put(Entry(B, NET, _network_at(i // len(lengths), prefix, version), INF))
    return bans


@pytest.fixture(scope="module")
def big() -> BanSet:
    bans = _build(ProbedBanSet, 100_000, 10_000)
    assert len(bans) == 110_000
    return bans


@pytest.fixture(scope="module")
def small() -> BanSet:
    return _build(ProbedBanSet, 2, len(V4_PREFIXES) + len(V6_PREFIXES))


def probes(bans: BanSet, *args: Any) -> tuple[Entry | None, int]:
    CountingDict.probes = 0
    found = bans.match(NOW, *args)
    return found, CountingDict.probes


PROBE_CASES = [
    # (address, principals, accounts, expected slot, the version's prefix lengths)
    ("198.51.100.7", (), (), None, len(V4_PREFIXES)),
    ("2001:db9::7", (), (), None, len(V6_PREFIXES)),
    ("::ffff:198.51.100.7", (), (), None, len(V4_PREFIXES)),
    ("198.51.100.7", ("user:a", "cred:b"), ("acct:1",), None, len(V4_PREFIXES)),
    ("10.0.0.1", ("user:a",), (), "ban address 10.0.0.1", len(V4_PREFIXES)),
]


@pytest.mark.parametrize(("address", "principals", "accounts", "expected", "lengths"), PROBE_CASES)
def test_match_probes_are_o1(
    big: BanSet,
    small: BanSet,
    address: str,
    principals: tuple[str, ...],
    accounts: tuple[str, ...],
    expected: str | None,
    lengths: int,
) -> None:
    bound = 1 + lengths + len(principals) + len(accounts)
    found, count = probes(big, address, principals, accounts)
    assert (found.slot if found else None) == expected
    assert count == bound  # every probe is one dict lookup; nothing is scanned
    small_found, small_count = probes(small, address, principals, accounts)
    assert small_count == count  # 110,000 entries cost what 36 do
    assert (small_found.slot if small_found else None) == expected


def test_a_network_match_costs_the_same(big: BanSet) -> None:
    inside = ipaddress.ip_network(big.entries(kind=NET)[0].value)  # the full listing scans once
    found, count = probes(big, str(inside.network_address))
    assert found is not None
    assert found.kind is NET
    assert count <= 1 + len(V4_PREFIXES)


def test_the_probe_count_catches_a_scan() -> None:
    """The O(1) assertion can fail: a set that scans its networks is caught."""
    linear = _build(LinearBanSet, 10, 2_000)
    _, count = probes(linear, "198.51.100.7")
    assert count > 1 + len(V4_PREFIXES)
