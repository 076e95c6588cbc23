"""The path-and-credential bypass matrix, in process: every spelling of a path times every
spelling of one credential, on every kind of route template, through both middlewares.

A spelling must never buy a second bucket or skip a key requirement: each request is either
counted against the route's one limit for the one client (and needs its key), or refused with
a 400 problem, and the app never runs a refused one. ``spell`` and ``ROUTE_KINDS`` are shared
with the gateway's matrix over real sockets (``tests/gateway/test_bypass_matrix_e2e.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from _support import T0
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock
from test_identity import CREDENTIAL_SPELLINGS, spelled
from test_paths import Recorder, call

#: (template, a path it matches): a plain path, a parameter, a wildcard, a ``:path`` rest.
ROUTE_KINDS: list[tuple[str, str]] = [
    ("/charges", "/charges"),
    ("/charges/{id}/capture", "/charges/ch_1/capture"),
    ("/v1/*", "/v1/refunds"),
    ("/files/{rest:path}", "/files/a/b"),
]

LIMIT = 3
KEY = "sk_test_matrix"


def spell(path: str) -> Iterator[tuple[bytes, bool]]:
    """Every spelling of ``path`` as exact request-target bytes, and whether a server must
    take it for the same resource (True) or refuse it (False)."""
    p = path.encode()
    same = [
        p,
        p + b"/",
        b"/" + p,
        p.replace(b"/", b"//"),
        b"/." + p,
        b"/%2e" + p,
        b"/x/.." + p,
        b"/x/%2E%2E" + p,
        p + b"/.",
        p.upper(),
        p[:1] + b"%%%02X" % p[1] + p[2:],
        p[:1] + b"%%%02x" % p[1] + p[2:],
    ]
    refused = [
        b"/%2F" + p[1:],
        b"/%2f" + p[1:],
        p + b"%2F",
        p + b"%5C",
        p + b"\\",
        p + b";jsessionid=1",
        p + b"%3B",
        p + b"%20",
        p + b"%09",
        p + b"%00",
        b"/.." + p,
        p + b"%zz",
    ]
    inner = p.find(b"/", 1)
    if inner > 0:  # an encoded slash between two segments
        refused.append(p[:inner] + b"%2F" + p[inner + 1 :])
    yield from ((s, True) for s in same)
    yield from ((s, False) for s in refused)


def credentials() -> list[list[tuple[bytes, bytes]]]:
    return [
        [(n.lower().encode(), v.encode()) for n, v in spelled(s, KEY)] for s in CREDENTIAL_SPELLINGS
    ]


def combinations(path: str) -> list[tuple[bytes, bool, list[tuple[bytes, bytes]]]]:
    return [
        (raw, same, creds) for (raw, same), creds in itertools.product(spell(path), credentials())
    ]


def test_the_spellings_cover_the_issues_list() -> None:
    spellings = {raw for raw, _ in spell("/charges")}
    issue = [
        b"/charges/",
        b"//charges",
        b"/./charges",
        b"/x/../charges",
        b"/charges/.",
        b"/%2Fcharges",
        b"/charges%2F",
        b"/CHARGES",
        b"/charges;jsessionid=1",
        b"/charges%20",
    ]
    assert set(issue) <= spellings


@pytest.mark.anyio
@pytest.mark.parametrize(("template", "path"), ROUTE_KINDS)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_no_spelling_of_path_or_credential_buys_a_second_bucket(
    template: str, path: str, method: str
) -> None:
    backend = Recorder()
    app = RateLimitMiddleware(
        backend,
        store=MemoryStore(),
        policies=[
            RateLimitPolicy("route", limits=[f"{LIMIT}/hour"], routes=[f"{method} {template}"])
        ],
        clock=ManualClock(T0),
        hooks=[],
    )
    outcomes: list[tuple[bytes, int, str | None]] = []
    for index, (raw, same, creds) in enumerate(combinations(path)):
        # A GET route is spent by HEAD too (it runs the GET handler).
        verb = "HEAD" if method == "GET" and index % 2 else method
        answer = await call(app, verb, raw, creds)
        outcomes.append((raw, answer.status, answer.code))
        if not same:
            assert (answer.status, answer.code) == (400, "invalid_path"), raw
        else:
            assert answer.status in (201, 429), (raw, answer)

    assert sum(status == 201 for _, status, _ in outcomes) == LIMIT
    assert len(backend.seen) == LIMIT
    assert {code for _, status, code in outcomes if status == 429} == {"rate_limit_exceeded"}


@pytest.mark.anyio
@pytest.mark.parametrize(("template", "path"), ROUTE_KINDS)
async def test_no_spelling_skips_the_key_requirement_or_runs_a_key_twice(
    template: str, path: str
) -> None:
    backend = Recorder()
    app = IdempotencyMiddleware(
        backend,
        store=MemoryStore(),
        policy=IdempotencyPolicy(required=False),
        routes={f"POST {template}": IdempotencyPolicy()},
        clock=ManualClock(T0),
        hooks=[],
    )
    for raw, same, creds in combinations(path):
        keyless = await call(app, "POST", raw, creds, b"{}")
        expected = "idempotency_key_missing" if same else "invalid_path"
        assert (keyless.status, keyless.code) == (400, expected), raw
    assert backend.seen == []

    # One key, one body, every spelling of path and credential: it runs once at most.
    answers = [
        await call(app, "POST", raw, [*creds, (b"idempotency-key", b"k-1")], b"{}")
        for raw, _, creds in combinations(path)
    ]
    assert len(backend.seen) == 1
    for answer in answers:
        # The first run, its replays, or a refusal: a spelling whose forwarded path differs
        # (case, trailing slash) is another request under the same key (422), never a run.
        assert answer.status in (201, 400, 422), answer
