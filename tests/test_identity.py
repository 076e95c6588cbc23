"""``surefoot.identity``: who is calling, and what the middlewares make of it.

``CREDENTIAL_SPELLINGS`` (every way to send one key that must be one principal) is shared
with the gateway's tests on real sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from surefoot.errors import ConfigurationError, CredentialsAmbiguous
from surefoot.idempotency import IdempotencyMiddleware
from surefoot.identity import Identity, default_principal, hash_credential
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

#: One key, ``{key}``, in every spelling that must be the one principal: header fields as
#: (name, value), names as a client may write them.
CREDENTIAL_SPELLINGS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("Authorization", "Bearer {key}"),),
    (("Authorization", "bearer {key}"),),
    (("Authorization", "BEARER {key}"),),
    (("Authorization", "Bearer  {key}"),),
    (("Authorization", "Bearer\t{key}"),),
    (("authorization", "bEaReR \t {key}  "),),
    (("Authorization", "{key}"),),
    (("X-API-Key", "{key}"),),
    (("x-api-key", " {key}\t"),),
    (("X-Api-Key", "{key}"), ("Authorization", "Bearer {key}")),
)


def spelled(spelling: Sequence[tuple[str, str]], key: str) -> list[tuple[str, str]]:
    """The header fields of ``spelling`` for ``key``."""
    return [(name, value.format(key=key)) for name, value in spelling]


def scope(peer: str | None = "203.0.113.9", **headers: str) -> dict[str, Any]:
    return {
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 1234) if peer else None,
    }


def fields(*headers: tuple[str, str], peer: str = "203.0.113.9", user: Any = None) -> Any:
    """A scope with these header fields, duplicates allowed (names in lower case, as ASGI
    servers give them)."""
    return {
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": (peer, 1234),
        **({"user": user} if user is not None else {}),
    }


class User:
    def __init__(self, authenticated: bool) -> None:
        self.is_authenticated = authenticated
        self.identity = "u-42"


def test_credentials_then_user_then_address() -> None:
    assert default_principal(scope(authorization="Bearer t")) == hash_credential(b"t")
    assert default_principal(scope(x_api_key="k")) == hash_credential(b"k")
    assert default_principal({**scope(), "user": User(True)}) == "user:u-42"
    assert default_principal({**scope(), "user": User(False)}) == "addr:203.0.113.9"
    assert default_principal(scope(peer=None)) == "addr:unknown"
    assert Identity(use_user=False)({**scope(), "user": User(True)}) == "addr:203.0.113.9"


def test_secret_keyed_hashes_differ() -> None:
    assert Identity(secret=b"s")(scope(x_api_key="k")) != hash_credential(b"k")
    assert Identity(credential_headers=["x-tenant"])(scope(x_tenant="t")) == hash_credential(b"t")


XFF, FWD = "x-forwarded-for", "forwarded"


@pytest.mark.parametrize(
    ("via", "peer", "headers", "expected"),
    [
        # Untrusted peers: forwarding headers are ignored.
        (XFF, "203.0.113.9", {"x_forwarded_for": "1.2.3.4"}, "203.0.113.9"),
        (FWD, "203.0.113.9", {"forwarded": "for=1.2.3.4"}, "203.0.113.9"),
        # Trusted proxy: the nearest untrusted hop is the client.
        (XFF, "10.0.0.1", {"x_forwarded_for": "1.2.3.4"}, "1.2.3.4"),
        (XFF, "10.0.0.1", {"x_forwarded_for": "6.6.6.6, 1.2.3.4, 10.0.0.2"}, "1.2.3.4"),
        (
            FWD,
            "10.0.0.1",
            {"forwarded": 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https'},
            "2001:db8::1",
        ),
        # Only the configured header is read: a proxy that appends to one passes a
        # client's own copy of the other through untouched.
        (
            XFF,
            "10.0.0.1",
            {"forwarded": "for=1.2.3.4:8080", "x_forwarded_for": "9.9.9.9"},
            "9.9.9.9",
        ),
        (
            FWD,
            "10.0.0.1",
            {"forwarded": "for=1.2.3.4:8080", "x_forwarded_for": "9.9.9.9"},
            "1.2.3.4",
        ),
        (XFF, "10.0.0.1", {"forwarded": "for=1.2.3.4"}, "10.0.0.1"),
        (FWD, "10.0.0.1", {"x_forwarded_for": "1.2.3.4"}, "10.0.0.1"),
        # Garbage stops the walk at the last trusted proxy.
        (XFF, "10.0.0.1", {"x_forwarded_for": "not-an-ip"}, "10.0.0.1"),
        (FWD, "10.0.0.1", {"forwarded": "for=_hidden"}, "10.0.0.1"),
        # A proxy with nothing to say.
        (XFF, "10.0.0.1", {}, "10.0.0.1"),
        (XFF, "::1", {"x_forwarded_for": "1.2.3.4"}, "1.2.3.4"),
        (XFF, "unix-socket", {"x_forwarded_for": "1.2.3.4"}, "unix-socket"),
    ],
)
def test_client_address_through_trusted_proxies(
    via: Any, peer: str, headers: dict[str, str], expected: str
) -> None:
    identity = Identity(trusted_proxies=["10.0.0.0/8", "::1"], forwarded_header=via)
    assert identity.client_address(scope(peer, **headers)) == expected
    assert identity(scope(peer, **headers)) == f"addr:{expected}"


def test_forwarded_header_must_be_one_of_the_two() -> None:
    with pytest.raises(ConfigurationError, match=r"forwarded_header: expected"):
        Identity(forwarded_header="x-real-ip")  # type: ignore[arg-type]


def test_bad_trusted_proxy_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"Identity\.trusted_proxies: expected IP addresses"
    ):
        Identity(trusted_proxies=["10.0.0.0/33"])
    assert "10.0.0.0/8" in repr(Identity(trusted_proxies=["10.0.0.0/8"]))


# -- one credential, one principal ----------------------------------------------------------


@pytest.mark.parametrize("spelling", CREDENTIAL_SPELLINGS)
def test_every_spelling_of_a_key_is_one_principal(spelling: tuple[tuple[str, str], ...]) -> None:
    request = fields(*spelled(spelling, "sk_live_K/+=="))
    for identity in (Identity(), Identity(known_credentials=["sk_live_K/+=="])):
        assert identity(request) == hash_credential(b"sk_live_K/+==")
        assert identity.rate_limit_principal(request) == hash_credential(b"sk_live_K/+==")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Basic dXNlcjpwYXNz", "BASIC \t dXNlcjpwYXNz"),
        ('Digest username="a", realm="b"', 'digest  username="a", realm="b"'),
    ],
)
def test_any_scheme_is_compared_case_insensitively(one: str, other: str) -> None:
    assert default_principal(fields(("authorization", one))) == default_principal(
        fields(("authorization", other))
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # The credential itself is kept byte for byte.
        ("Bearer K", "Bearer k"),
        ("Bearer K", "Bearer K2"),
        # Another scheme is another credential; only a Bearer token is the bare key.
        ("Basic K", "Bearer K"),
        ("Basic K", "K"),
    ],
)
def test_different_credentials_stay_different(one: str, other: str) -> None:
    assert default_principal(fields(("authorization", one))) != default_principal(
        fields(("authorization", other))
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("authorization", "Bearer K"), ("authorization", "Bearer K")], "sent more than once"),
        ([("authorization", "Bearer K"), ("authorization", "Bearer J")], "sent more than once"),
        ([("x-api-key", "K"), ("x-api-key", "J")], "sent more than once"),
        ([("x-api-key", "K"), ("authorization", "Bearer K, Bearer J")], "more than one"),
        ([("authorization", "Bearer K,J")], "more than one credential"),
        ([("authorization", "K, J")], "more than one credential"),
        ([("authorization", "Basic dXNlcjpwYXNz, Bearer K")], "more than one credential"),
        ([("authorization", 'Digest realm="a", Bearer K')], "more than one credential"),
    ],
)
def test_ambiguous_credentials_are_refused(headers: list[tuple[str, str]], reason: str) -> None:
    identity = Identity(known_credentials=["K"])
    for resolve in (default_principal, identity, identity.rate_limit_principal):
        with pytest.raises(CredentialsAmbiguous) as caught:
            resolve(fields(*headers))
        assert caught.value.status == 400
        assert reason in caught.value.detail
        assert "K" not in caught.value.detail.replace("Nothing", "")  # never the credential


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="a", realm="x, y", nonce="n\\", Bearer z", qop=auth',
        "Bearer abc==",
        "Bearer a, b=c",  # not a list of credentials: an odd auth-param
        "Negotiate",
    ],
)
def test_one_credential_with_commas_or_padding_is_not_ambiguous(value: str) -> None:
    assert default_principal(fields(("authorization", value))).startswith("cred:")


def test_a_comma_in_another_credential_header_is_its_value() -> None:
    assert default_principal(fields(("x-api-key", "K, J"))) == hash_credential(b"K, J")


def test_precedence_is_the_order_of_credential_headers() -> None:
    both = fields(("x-api-key", "J"), ("authorization", "Bearer K"))
    known = Identity(known_credentials=["J", "K"])
    assert known(both) == hash_credential(b"K")
    reversed_ = Identity(
        credential_headers=["X-API-Key", "Authorization"], known_credentials=["J", "K"]
    )
    assert reversed_(both) == hash_credential(b"J")
    # An empty header is no credential: the next one counts.
    assert default_principal(fields(("authorization", " \t"), ("x-api-key", "J"))) == (
        hash_credential(b"J")
    )
    assert default_principal(fields(("authorization", ""))) == "addr:203.0.113.9"


def test_without_known_credentials_different_credentials_in_two_headers_are_refused() -> None:
    # A junk Authorization beside a real X-API-Key: which one the upstream authenticates is
    # not ours to guess, and guessing differently is how a caller would pick its bucket.
    both = fields(("authorization", "Bearer junk-1"), ("x-api-key", "K"))
    for resolve in (default_principal, default_principal.rate_limit_principal):
        with pytest.raises(CredentialsAmbiguous, match="carry different credentials"):
            resolve(both)
    # The same key in both is one credential.
    same = fields(("authorization", "Bearer K"), ("x-api-key", " K"))
    assert default_principal(same) == hash_credential(b"K")


# -- unknown credentials ----------------------------------------------------------------------


def test_without_known_credentials_every_credential_is_its_own_principal() -> None:
    identity = Identity()
    for key in ("a", "b"):
        assert identity.rate_limit_principal(fields(("x-api-key", key))) == hash_credential(
            key.encode()
        )
    assert identity.address_principal(fields(("x-api-key", "a"))) == "addr:203.0.113.9"


def test_unknown_credentials_are_rate_limited_as_their_address_but_scope_keys_alone() -> None:
    identity = Identity(known_credentials=["K"])
    one, other = fields(("x-api-key", "stranger-1")), fields(("x-api-key", "stranger-2"))
    # Counters: one address, however many keys it makes up.
    assert identity.rate_limit_principal(one) == "addr:203.0.113.9"
    assert identity.rate_limit_principal(other) == "addr:203.0.113.9"
    # Idempotency records: never shared between two credentials behind one address.
    assert identity(one) == hash_credential(b"stranger-1")
    assert identity(other) == hash_credential(b"stranger-2")
    # An authenticated user is better than an address.
    assert identity.rate_limit_principal({**one, "user": User(True)}) == "user:u-42"
    assert identity.rate_limit_principal(fields()) == "addr:203.0.113.9"


@pytest.mark.parametrize(
    "headers",
    [
        [("x-api-key", "K"), ("authorization", "Bearer junk-1")],
        [("authorization", "junk-2"), ("x-api-key", " K ")],
        [("authorization", "bearer K"), ("x-api-key", "junk-3")],
    ],
)
def test_a_known_credential_wins_over_unknown_ones(headers: list[tuple[str, str]]) -> None:
    identity = Identity(known_credentials=[b"K"])
    assert identity(fields(*headers)) == hash_credential(b"K")
    assert identity.rate_limit_principal(fields(*headers)) == hash_credential(b"K")


def test_known_credentials_as_a_function_and_with_a_secret() -> None:
    issued = Identity(known_credentials=lambda credential: credential.startswith(b"sk_"))
    assert issued.rate_limit_principal(fields(("x-api-key", "sk_1"))) == hash_credential(b"sk_1")
    assert issued.rate_limit_principal(fields(("x-api-key", "pk_1"))) == "addr:203.0.113.9"
    keyed = Identity(secret=b"s", known_credentials=["K"])
    assert keyed.rate_limit_principal(fields(("authorization", "Bearer K"))) == hash_credential(
        b"K", secret=b"s"
    )
    nobody = Identity(known_credentials=[])
    assert nobody.rate_limit_principal(fields(("x-api-key", "K"))) == "addr:203.0.113.9"


def test_known_credentials_are_checked_and_never_shown() -> None:
    with pytest.raises(ConfigurationError, match="a collection of API keys or a function"):
        Identity(known_credentials="sk_secret")
    with pytest.raises(ConfigurationError, match="API keys as str or bytes, got int"):
        Identity(known_credentials=[1])  # type: ignore[list-item]
    shown = repr(Identity(known_credentials=["sk_secret", "sk_other"]))
    assert "sk_" not in shown
    assert "known_credentials=<2 keys>" in shown
    assert "known_credentials=<function>" in repr(Identity(known_credentials=bool))


# -- the middlewares --------------------------------------------------------------------------


class Counted:
    def __init__(self) -> None:
        self.calls = 0

    async def endpoint(self, request: Request) -> PlainTextResponse:
        self.calls += 1
        await request.body()
        return PlainTextResponse(f"call {self.calls}", status_code=201)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["GET", "POST"])])


def client(app: Any, peer: str = "203.0.113.9") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=(peer, 1), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def limited(app: Any, *policies: RateLimitPolicy, **options: Any) -> RateLimitMiddleware:
    return RateLimitMiddleware(
        app, store=MemoryStore(), policies=policies, clock=ManualClock(1e9), hooks=[], **options
    )


def idempotent(app: Any, **options: Any) -> IdempotencyMiddleware:
    return IdempotencyMiddleware(
        app, store=MemoryStore(), clock=ManualClock(1e9), hooks=[], **options
    )


@pytest.mark.anyio
@pytest.mark.parametrize("layer", ["ratelimit", "idempotency"])
async def test_both_middlewares_answer_ambiguous_credentials_with_a_400_problem(
    layer: str,
) -> None:
    backend = Counted()
    if layer == "ratelimit":
        app: Any = limited(backend.app(), RateLimitPolicy("p", limits=["5/minute"]))
    else:
        app = idempotent(backend.app())
    headers = [
        ("Authorization", "Bearer K"),
        ("Authorization", "Bearer J"),
        ("Idempotency-Key", "k"),
    ]
    async with client(app) as c:
        refused = await c.post("/charges", headers=headers, content=b"{}")
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "credentials_ambiguous"
    assert backend.calls == 0


@pytest.mark.anyio
async def test_an_address_ceiling_in_front_of_per_credential_limits() -> None:
    backend = Counted()
    app = limited(
        backend.app(),
        RateLimitPolicy("keys", limits=["2/minute"]),
        RateLimitPolicy("ceiling", limits=["3/minute"], per="address"),
    )
    async with client(app) as c:
        one_key = [(await c.get("/x", headers={"X-API-Key": "k"})).status_code for _ in range(3)]
        fresh = [(await c.get("/x", headers={"X-API-Key": f"k{n}"})).status_code for n in range(3)]
        refused = await c.get("/x", headers={"X-API-Key": "k9"})
    async with client(app, peer="198.51.100.1") as elsewhere:
        other_address = await elsewhere.get("/x", headers={"X-API-Key": "k9"})
    assert one_key == [201, 201, 429]  # each key its own bucket...
    assert fresh == [201, 429, 429]  # ...and the address as a whole 3
    assert refused.json()["policy"] == "ceiling"
    assert other_address.status_code == 201
    assert backend.calls == 4


@pytest.mark.anyio
async def test_unknown_keys_share_their_address_bucket_but_never_a_stored_response() -> None:
    backend = Counted()
    identity = Identity(known_credentials=["sk_known"])
    app = limited(
        idempotent(backend.app(), principal=identity),
        RateLimitPolicy("keys", limits=["3/minute"]),
        principal=identity,
    )
    key = {"Idempotency-Key": "same-key"}
    async with client(app) as c:
        first = await c.post("/charges", headers={**key, "X-API-Key": "made-up-1"}, json={})
        second = await c.post("/charges", headers={**key, "X-API-Key": "made-up-2"}, json={})
        again = await c.post("/charges", headers={**key, "X-API-Key": "made-up-1"}, json={})
        fourth = await c.post("/charges", headers={"X-API-Key": "made-up-3"}, json={})
        known = await c.post(
            "/charges",
            headers={"Authorization": "bearer sk_known", "Idempotency-Key": "k2"},
            json={},
        )
    assert [first.text, second.text] == ["call 1", "call 2"]  # two principals, two executions
    assert "idempotent-replayed" not in second.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.text == "call 1"
    assert fourth.status_code == 429  # four made-up keys, one address: 3 a minute
    assert known.status_code == 201


def test_an_address_policy_needs_an_identity() -> None:
    with pytest.raises(ConfigurationError, match=r"'ceiling'\.per: 'address' expects"):
        limited(
            Counted().app(),
            RateLimitPolicy("ceiling", limits=["3/minute"], per="address"),
            principal=lambda scope: "tenant",
        )
    with pytest.raises(ConfigurationError, match=r"\.per: expected 'principal' or 'address'"):
        RateLimitPolicy("p", limits=["1/minute"], per="route")  # type: ignore[arg-type]


def test_lists_credentials_says_whether_unknown_ones_can_count_as_their_address() -> None:
    assert not Identity().lists_credentials
    assert Identity(known_credentials=["k"]).lists_credentials
    assert Identity(known_credentials=lambda credential: False).lists_credentials
