"""One spelling per resource: the canonical path (``surefoot._paths``), how route templates
match it (``surefoot._routes``), ``canonicalize`` on a scope, and both middlewares given
every spelling that walked around a route (issue 12), as exact bytes in ``raw_path``.

``SPELLINGS`` and ``call`` are imported by other tests (the bypass matrix).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _support import T0
from surefoot._asgi import CANONICAL, ROUTE_METHOD, ASGIApp, Message, Scope, canonicalize
from surefoot._paths import CanonicalPath, canonical_path, quote_path
from surefoot._routes import RouteTable, match_form
from surefoot.errors import BadRequest, InvalidPath
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

#: Spellings of ``/charges`` as sent, with the path the app or upstream must receive for
#: each (it is matched as ``/charges``), or None when it must be refused (400
#: ``invalid_path``). The first ten walked around a per-route limit and key (issue 12).
SPELLINGS: list[tuple[bytes, bytes | None]] = [
    (b"/charges/", b"/charges/"),
    (b"//charges", b"/charges"),
    (b"/./charges", b"/charges"),
    (b"/x/../charges", b"/charges"),
    (b"/charges/.", b"/charges/"),
    (b"/%2Fcharges", None),
    (b"/charges%2F", None),
    (b"/Charges", b"/Charges"),
    (b"/charges;jsessionid=1", None),
    (b"/charges%20", None),
    (b"/%63harges", b"/charges"),
    (b"/%2e/charges", b"/charges"),
    (b"/x/%2E%2E/charges", b"/charges"),
    (b"/CHARGES//", b"/CHARGES/"),
    (b"/charges%2f", None),
    (b"/charges%5C", None),
    (b"/charges\\", None),
    (b"/charges%3B", None),
    (b"/charges%09", None),
    (b"/charges%00", None),
    (b"/charges%C2%A0", None),
    (b"/../charges", None),
]

CLIENT = ("203.0.113.7", 40000)


# -- the canonical path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical", "decoded"),
    [
        (b"/", b"/", "/"),
        (b"/charges", b"/charges", "/charges"),
        (b"/v1/charges/ch_1", b"/v1/charges/ch_1", "/v1/charges/ch_1"),
        (b"/.well-known/x", b"/.well-known/x", "/.well-known/x"),
        (b"/a.b/c..d/", b"/a.b/c..d/", "/a.b/c..d/"),
        (b"///", b"/", "/"),
        (b"/.", b"/", "/"),
        (b"/a/..", b"/", "/"),
        (b"/a/b/..", b"/a/", "/a/"),
        (b"/a/./b/../../c/", b"/c/", "/c/"),
        (b"/a//../b", b"/b", "/b"),
        (b"/%41%7e%2D%5f", b"/A~-_", "/A~-_"),
        (b"/a%7bb%7D", b"/a%7Bb%7D", "/a{b}"),
        (b"/{x}", b"/%7Bx%7D", "/{x}"),
        (b"/caf\xc3\xa9", b"/caf%C3%A9", "/café"),
        (b"/caf%c3%a9", b"/caf%C3%A9", "/café"),
        (b"/x%ff", b"/x%FF", "/x\ufffd"),
        (b"/100%25", b"/100%25", "/100%"),
        (b"/a:b@c!$&'()*+,=", b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ],
)
def test_paths_are_normalised(raw: bytes, canonical: bytes, decoded: str) -> None:
    assert canonical_path(raw) == CanonicalPath(decoded, canonical)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "does not start with '/'"),
        (b"*", "does not start with '/'"),
        (b"charges", "does not start with '/'"),
        (b"/%zz", "invalid percent-encoding"),
        (b"/%2", "invalid percent-encoding"),
        (b"/a%", "invalid percent-encoding"),
        (b"/%2F", "encoded slash or backslash"),
        (b"/%2f", "encoded slash or backslash"),
        (b"/%5c", "encoded slash or backslash"),
        (b"/a\\b", "a backslash"),
        (b"/a;b", "';'"),
        (b"/a%3b", "';'"),
        (b"/a b", "control character or whitespace"),
        (b"/a\tb", "control character or whitespace"),
        (b"/a\x7f", "control character or whitespace"),
        (b"/a%20", "control character or whitespace"),
        (b"/a%0A", "control character or whitespace"),
        (b"/a%7F", "control character or whitespace"),
        (b"/a%C2%85", "control character or whitespace"),
        (b"/a%E2%80%A8", "control character or whitespace"),
        (b"/a%E3%80%80", "control character or whitespace"),
        (b"/..", "climbs above the root"),
        (b"/a/../..", "climbs above the root"),
        (b"/%2E%2E/a", "climbs above the root"),
    ],
)
def test_paths_that_could_mean_something_else_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        canonical_path(raw)
    assert reason in caught.value.fields["reason"]
    assert caught.value.status == 400
    assert caught.value.code == "invalid_path"


def test_a_decoded_path_is_encoded_again_so_the_same_spellings_are_refused() -> None:
    with pytest.raises(InvalidPath):
        canonical_path(quote_path("/a b"))
    with pytest.raises(InvalidPath):
        canonical_path(quote_path("/a;b"))
    with pytest.raises(InvalidPath):
        canonical_path(quote_path("/a\\b"))
    assert canonical_path(quote_path("//a/./b/%2F/café")).path == "/a/b/%2F/café"


def remove_dot_segments(path: str) -> tuple[str, bool]:
    """RFC 3986 section 5.2.4, the reference model, as the RFC writes it (an input buffer
    consumed from the left); also says whether a ``..`` climbed above the root."""
    source, out, climbed = path, "", False
    while source:
        if source.startswith(("../", "./")):
            source = source[source.index("/") + 1 :]
        elif source.startswith("/./") or source == "/.":
            source = "/" + source[3:]
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:]
            if "/" in out:
                out = out[: out.rindex("/")]
            else:
                climbed = True
        elif source in (".", ".."):
            source = ""
        else:
            start = 1 if source.startswith("/") else 0
            end = source.find("/", start)
            end = len(source) if end < 0 else end
            out, source = out + source[:end], source[end:]
    return out, climbed


PLAIN = st.text(alphabet="/.abcAB", max_size=24).map(lambda s: "/" + s)


@given(PLAIN)
def test_dot_segments_are_removed_as_rfc_3986_says_after_slashes_are_collapsed(
    path: str,
) -> None:
    expected, climbed = remove_dot_segments(re.sub("/+", "/", path))
    if climbed:
        with pytest.raises(InvalidPath):
            canonical_path(path.encode())
    else:
        assert canonical_path(path.encode()).raw == (expected or "/").encode()


ANY_PATH = st.lists(
    st.sampled_from(
        [
            "/",
            "//",
            ".",
            "..",
            "/.",
            "/..",
            "%",
            "%2",
            "%2e",
            "%2E",
            "%41",
            "%7e",
            "%2F",
            "%5c",
            "%3B",
            "%20",
            "%C3%A9",
            "%ff",
            "a",
            "B",
            "~",
            ";",
            "\\",
            " ",
            "é",
            "{",
            ":",
            "%25",
        ]
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


@given(ANY_PATH)
def test_a_canonical_path_is_a_fixed_point_without_a_second_spelling_inside(path: str) -> None:
    try:
        found = canonical_path(path.encode())
    except InvalidPath:
        return
    assert canonical_path(found.raw) == found
    raw = found.raw.decode("ascii")
    assert raw.startswith("/")
    assert "//" not in raw
    for bad in ("/./", "/../", ";", "%2F", "%5C", "\\", " "):
        assert bad not in raw + "/"
    assert not raw.endswith(("/.", "/.."))
    assert unquote(raw, errors="replace") == found.path


SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=6)


@st.composite
def spelling(draw: st.DrawFn, segments: Sequence[str]) -> str:
    """Some spelling of ``"/" + "/".join(segments)`` that must be accepted and match it."""
    parts = []
    for segment in segments:
        if draw(st.booleans()):
            parts.append(draw(st.sampled_from([".", "x/..", "%2E", "y/%2e%2E", ""])))
        letters = "".join(
            draw(st.sampled_from([c, c.upper(), f"%{ord(c):02x}", f"%{ord(c):02X}"]))
            for c in segment
        )
        parts.append(letters)
    tail = draw(st.sampled_from(["", "/", "//", "/.", "/x/.."]))
    return "/" + "/".join(parts) + tail


@given(st.data(), st.lists(SEGMENT, min_size=1, max_size=4))
def test_every_accepted_spelling_of_a_route_matches_it(
    data: st.DataObject, segments: list[str]
) -> None:
    template = "POST /" + "/".join(segments)
    table = RouteTable([(template, True), ("POST /*", False)])
    sent = data.draw(spelling(segments))
    found = canonical_path(sent.encode())
    assert table.match("POST", found.path) == (template, True), (sent, found)


# -- route templates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "method", "path", "params"),
    [
        ("POST /charges", "POST", "/charges", {}),
        ("POST /charges", "POST", "/Charges", {}),
        ("POST /charges", "POST", "/CHARGES/", {}),
        ("POST /charges/", "POST", "/charges", {}),
        ("POST /charges", "POST", "/charges/x", None),
        ("POST /charges", "POST", "/charges//", None),
        ("POST /charges", "GET", "/charges", None),
        ("GET /charges", "HEAD", "/charges", {}),
        ("HEAD /charges", "GET", "/charges", None),
        ("GET /charges", "POST", "/charges", None),
        ("/charges", "DELETE", "/charges/", {}),
        ("* /charges", "PATCH", "/charges", {}),
        ("/", "GET", "/", {}),
        ("/", "GET", "/x", None),
        ("GET /v1/*", "GET", "/v1", {}),
        ("GET /v1/*", "GET", "/V1/", {}),
        ("GET /v1/*", "GET", "/v1/a/B/", {}),
        ("GET /v1/*", "GET", "/v10", None),
        ("GET /v1*", "GET", "/v10/", {}),
        ("/*", "GET", "/", {}),
        ("/c/{id}", "POST", "/C/Ch_AbC/", {"id": "Ch_AbC"}),
        ("/c/{id}", "POST", "/c/", None),
        ("/c/{id}/refund", "POST", "/c/Ch_1/REFUND", {"id": "Ch_1"}),
        ("/files/{rest:path}", "GET", "/files", {"rest": ""}),
        ("/files/{rest:path}", "GET", "/files/", {"rest": ""}),
        ("/files/{rest:path}", "GET", "/Files/A/b/", {"rest": "A/b/"}),
        ("/files/{rest:path}", "GET", "/filesx", None),
        ("/f/{a:path}/x", "GET", "/f/A/b/X/", {"a": "A/b"}),
    ],
)
def test_templates_ignore_case_one_trailing_slash_and_take_head_for_get(
    template: str, method: str, path: str, params: dict[str, str] | None
) -> None:
    table = RouteTable([(template, "v")])
    if params is None:
        assert table.match(method, path) is None
        assert table.match_params(method, path) is None
    else:
        assert table.match(method, path) == (template, "v")
        assert table.match_params(method, path) == (template, "v", params)


def test_match_form_is_what_every_matching_spelling_shares() -> None:
    assert {match_form(p) for p in ("/Charges", "/charges/", "/CHARGES")} == {"/charges"}
    assert match_form("/") == "/"
    assert match_form("/a//") == "/a/"


# -- canonicalize, on a scope ------------------------------------------------------------


def scope_of(
    method: str, raw: bytes | None, headers: Sequence[tuple[bytes, bytes]] = (), path: str = ""
) -> Scope:
    """An HTTP scope as a server builds it from the exact bytes ``raw`` (None: a server that
    gives no ``raw_path``, only ``path``)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path or unquote((raw or b"").decode("latin-1")),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"api.test"), *headers],
        "client": CLIENT,
        "server": ("api.test", 80),
    }
    if raw is not None:
        scope["raw_path"] = raw
    return scope


def test_canonicalize_rewrites_both_paths_and_is_done_once() -> None:
    scope = scope_of("GET", b"//a/./%62/../c%7e/")
    assert canonicalize(scope, allow_method_override=False) is None
    assert (scope["path"], scope["raw_path"], scope[CANONICAL]) == ("/a/c~/", b"/a/c~/", True)
    scope["raw_path"] = b"/%2F"  # never looked at again: the scope is marked canonical
    assert canonicalize(scope, allow_method_override=False) is None
    assert scope["raw_path"] == b"/%2F"


def test_canonicalize_reads_the_path_when_there_is_no_raw_path() -> None:
    scope = scope_of("GET", None, path="//a/../b c")
    error = canonicalize(scope, allow_method_override=False)
    assert isinstance(error, InvalidPath)
    scope = scope_of("GET", None, path="//a/../b%2Fc")
    assert canonicalize(scope, allow_method_override=False) is None
    assert (scope["path"], scope["raw_path"]) == ("/b%2Fc", b"/b%252Fc")


def test_canonicalize_trusts_raw_path_over_a_path_that_disagrees() -> None:
    scope = scope_of("POST", b"/charges%2F", path="/charges/")
    assert isinstance(canonicalize(scope, allow_method_override=False), InvalidPath)


OVERRIDES = [
    (b"x-http-method-override", b"GET"),
    (b"x-method-override", b"get"),
    (b"x-http-method", b"GET"),
]


def test_method_override_headers_are_removed_by_default() -> None:
    scope = scope_of("POST", b"/charges", [*OVERRIDES, (b"x-other", b"1")])
    assert canonicalize(scope, allow_method_override=False) is None
    assert scope["headers"] == [(b"host", b"api.test"), (b"x-other", b"1")]
    assert ROUTE_METHOD not in scope


def test_an_allowed_override_is_kept_and_names_a_posts_route_method() -> None:
    scope = scope_of("POST", b"/charges", OVERRIDES)
    assert canonicalize(scope, allow_method_override=True) is None
    assert scope["headers"][1:] == OVERRIDES
    assert scope[ROUTE_METHOD] == "GET"
    scope = scope_of("PUT", b"/charges", OVERRIDES[:1])
    assert canonicalize(scope, allow_method_override=True) is None
    assert ROUTE_METHOD not in scope  # frameworks only honour it on a POST
    assert scope["headers"] == [(b"host", b"api.test")]  # so nothing behind sees it


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-http-method-override", b"GET"), (b"x-method-override", b"DELETE")],
        [(b"x-http-method-override", b"GET"), (b"x-http-method-override", b"PUT")],
        [(b"x-http-method-override", b"GET, DELETE")],
        [(b"x-http-method-override", b"")],
    ],
)
def test_allowed_override_headers_that_name_no_single_method_are_refused(
    headers: list[tuple[bytes, bytes]],
) -> None:
    scope = scope_of("POST", b"/charges", headers)
    error = canonicalize(scope, allow_method_override=True)
    assert isinstance(error, BadRequest)
    assert error.status == 400


# -- both middlewares, in process ---------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def code(self) -> str | None:
        if (b"content-type", b"application/problem+json") not in self.headers:
            return None
        code: str = json.loads(self.body)["code"]
        return code


async def call(
    app: ASGIApp,
    method: str,
    raw: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> Answer:
    """Call ``app`` with a scope built from the exact request path ``raw``."""
    scope = scope_of(method, raw, headers)
    sent = False
    out: dict[str, Any] = {"body": b""}

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], list(message.get("headers", []))
        else:
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return Answer(out["status"], out["headers"], out["body"])


@dataclass
class Recorder:
    """The protected app: records what it was given, answers 201."""

    seen: list[tuple[str, bytes, str, list[bytes]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        names = [name for name, _ in scope["headers"]]
        self.seen.append((scope["method"], scope["raw_path"], scope["path"], names))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def limited(app: ASGIApp, **options: Any) -> RateLimitMiddleware:
    policies = [
        RateLimitPolicy("charges", limits=["1/minute"], routes=["POST /charges"]),
        RateLimitPolicy("lists", limits=["1/minute"], routes=["GET /charges"]),
    ]
    return RateLimitMiddleware(
        app,
        store=MemoryStore(),
        policies=policies,
        clock=ManualClock(T0),
        hooks=[],
        **options,
    )


def keyed(app: ASGIApp, **options: Any) -> IdempotencyMiddleware:
    return IdempotencyMiddleware(
        app,
        store=MemoryStore(),
        policy=IdempotencyPolicy(required=False),
        routes={"POST /charges": IdempotencyPolicy()},
        clock=ManualClock(T0),
        hooks=[],
        **options,
    )


@pytest.mark.anyio
@pytest.mark.parametrize(("raw", "forwarded"), SPELLINGS)
async def test_every_spelling_is_rate_limited_as_the_route_or_refused(
    raw: bytes, forwarded: bytes | None
) -> None:
    backend = Recorder()
    app = limited(backend)
    first = await call(app, "POST", raw)
    if forwarded is None:
        assert (first.status, first.code) == (400, "invalid_path")
        assert backend.seen == []
        return
    assert first.status == 201
    assert backend.seen[0][1] == forwarded
    again = await call(app, "POST", b"/charges")  # the spelling spent the route's one request
    assert (again.status, again.code) == (429, "rate_limit_exceeded")
    other = limited(Recorder())
    assert (await call(other, "POST", b"/charges")).status == 201
    after = await call(other, "POST", raw)  # and the route's request left none for it
    assert (after.status, after.code) == (429, "rate_limit_exceeded")


@pytest.mark.anyio
@pytest.mark.parametrize(("raw", "forwarded"), SPELLINGS)
async def test_every_spelling_needs_the_routes_key_or_is_refused(
    raw: bytes, forwarded: bytes | None
) -> None:
    backend = Recorder()
    app = keyed(backend)
    keyless = await call(app, "POST", raw)
    expected = ("idempotency_key_missing",) if forwarded is not None else ("invalid_path",)
    assert (keyless.status, keyless.code) == (400, *expected)
    with_key = await call(app, "POST", raw, [(b"idempotency-key", b"k-1")])
    if forwarded is None:
        assert (with_key.status, with_key.code) == (400, "invalid_path")
        assert backend.seen == []
    else:
        assert with_key.status == 201
        assert [s[1] for s in backend.seen] == [forwarded]


@pytest.mark.anyio
async def test_head_spends_a_get_routes_limit() -> None:
    backend = Recorder()
    app = limited(backend)
    assert (await call(app, "HEAD", b"/charges/")).status == 201
    refused = await call(app, "GET", b"/charges")
    assert (refused.status, refused.code) == (429, "rate_limit_exceeded")


@pytest.mark.anyio
@pytest.mark.parametrize("override", OVERRIDES)
async def test_a_post_overridden_to_get_still_needs_its_key_and_the_header_is_gone(
    override: tuple[bytes, bytes],
) -> None:
    backend = Recorder()
    keyless = await call(keyed(backend), "POST", b"/charges", [override])
    assert (keyless.status, keyless.code) == (400, "idempotency_key_missing")
    app = limited(keyed(backend))
    sent = await call(app, "POST", b"/charges", [override, (b"idempotency-key", b"k-1")])
    assert sent.status == 201
    assert backend.seen[0][0] == "POST"
    assert override[0] not in backend.seen[0][3]
    # It spent the POST route's limit, not the GET route's.
    refused = await call(app, "POST", b"/charges", [override, (b"idempotency-key", b"k-2")])
    assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
    assert (await call(app, "GET", b"/charges")).status == 201


@pytest.mark.anyio
async def test_an_allowed_override_is_matched_as_the_method_the_app_will_run() -> None:
    backend = Recorder()
    override = (b"x-http-method-override", b"GET")
    app = limited(keyed(backend, allow_method_override=True), allow_method_override=True)
    first = await call(app, "POST", b"/charges", [override])  # a GET: no key needed
    assert first.status == 201
    assert override[0] in backend.seen[0][3]
    again = await call(app, "GET", b"/charges")  # the GET route's one request is spent
    assert again.status == 429
    assert (await call(app, "POST", b"/charges", [(b"idempotency-key", b"k")])).status == 201


@pytest.mark.anyio
@pytest.mark.parametrize("wrap", [limited, keyed])
async def test_a_refused_path_or_override_never_reaches_the_app(wrap: Any) -> None:
    backend = Recorder()
    answer = await call(wrap(backend), "GET", b"/a%2Fb")
    assert (answer.status, answer.code) == (400, "invalid_path")
    assert answer.headers[0] == (b"content-type", b"application/problem+json")
    body = json.loads(answer.body)
    assert "encoded slash" in body["detail"]
    headers = [(b"x-http-method-override", b"GET"), (b"x-method-override", b"PUT")]
    answer = await call(wrap(backend, allow_method_override=True), "POST", b"/x", headers)
    assert (answer.status, answer.code) == (400, "bad_request")
    assert backend.seen == []


@pytest.mark.anyio
async def test_a_route_scoped_key_is_one_key_for_every_spelling_of_an_unnamed_route() -> None:
    backend = Recorder()
    app = IdempotencyMiddleware(
        backend,
        store=MemoryStore(),
        policy=IdempotencyPolicy(scope="principal_route"),
        clock=ManualClock(T0),
        hooks=[],
    )
    key = [(b"idempotency-key", b"k-1")]
    assert (await call(app, "POST", b"/orders", key)).status == 201
    again = await call(app, "POST", b"/Orders/", key)
    # The same key on another spelling of the same route: never a second execution.
    assert (again.status, again.code) == (422, "idempotency_key_reused")
    assert len(backend.seen) == 1


# -- what takes protection away matches only its own spelling (_routes Rule 5) ---------------


@pytest.mark.parametrize(
    ("path", "strict", "loose"),
    [
        ("/health", True, True),
        ("/HEALTH", False, True),
        ("/health/", False, True),
        ("/v1/x", True, True),
    ],
)
def test_strict_templates_match_only_their_own_spelling(
    path: str, strict: bool, loose: bool
) -> None:
    template = "GET /v1/*" if path.startswith("/v1") else "GET /health"
    assert (RouteTable([(template, 1)], strict=bool).match("GET", path) is not None) is strict
    assert (RouteTable([(template, 1)]).match("GET", path) is not None) is loose


@pytest.mark.anyio
async def test_an_exemption_covers_only_its_own_spelling() -> None:
    backend = Recorder()
    policy = RateLimitPolicy("all", limits=["1/minute"], exempt=["GET /users/me"])
    app = RateLimitMiddleware(
        backend,
        store=MemoryStore(),
        policies=[policy],
        clock=ManualClock(T0),
        hooks=[],
    )
    assert [(await call(app, "GET", b"/users/me")).status for _ in range(3)] == [201] * 3
    # /users/ME may be another user's page on a case-sensitive app: it is limited.
    assert [(await call(app, "GET", b"/users/ME")).status for _ in range(2)] == [201, 429]


@pytest.mark.anyio
async def test_a_route_left_unprotected_covers_only_its_own_spelling() -> None:
    backend = Recorder()
    app = IdempotencyMiddleware(
        backend,
        store=MemoryStore(),
        policy=IdempotencyPolicy(),
        routes={"POST /charges/preview": None},
        clock=ManualClock(T0),
        hooks=[],
    )
    assert (await call(app, "POST", b"/charges/preview")).status == 201
    other = await call(app, "POST", b"/charges/Preview")
    assert (other.status, other.code) == (400, "idempotency_key_missing")
