"""``surefoot._asgi``: the request ids every layer reports, and canonical paths under a
mount prefix (``root_path``)."""

from __future__ import annotations

import os
import uuid

import pytest

from surefoot._asgi import canonicalize, new_request_id, request_id
from surefoot.errors import InvalidPath


def test_a_made_up_request_id_is_a_fresh_uuid4_in_hex() -> None:
    ids = [new_request_id() for _ in range(300)]  # more than one batch of random bytes
    assert len(set(ids)) == len(ids)
    for rid in ids:
        made = uuid.UUID(hex=rid)
        assert (made.version, made.variant, made.hex) == (4, uuid.RFC_4122, rid)


def test_a_request_keeps_one_id_and_a_valid_header_is_believed() -> None:
    scope: dict[str, object] = {"headers": [(b"x-request-id", b"given-1")]}
    assert request_id(scope) == request_id(scope) == "given-1"
    scope = {"headers": [(b"x-request-id", b"not valid!")]}
    made = request_id(scope)
    assert len(made) == 32
    assert request_id(scope) == made


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_process_never_hands_out_its_parent_s_ids() -> None:
    new_request_id()  # the parent holds a batch of ids not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, ",".join(new_request_id() for _ in range(64)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(64)}
    assert len(child) == 64
    assert not child & parent


def _scope(path: str, raw: bytes | None, root: str) -> dict[str, object]:
    scope: dict[str, object] = {"method": "POST", "path": path, "root_path": root, "headers": []}
    if raw is not None:
        scope["raw_path"] = raw
    return scope


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/app/../charges", b"/app/../charges"),
        ("/app/../charges", b"/app/%2e%2e/charges"),
        ("/app/../charges", None),
        ("/app/../charges", b"/../charges"),  # a server whose raw_path leaves root_path out
        ("/app/x/../../charges", b"/app/x/../../charges"),
    ],
)
def test_a_path_that_leaves_its_root_path_is_refused(path: str, raw: bytes | None) -> None:
    refused = canonicalize(_scope(path, raw, "/app"), allow_method_override=False)
    assert isinstance(refused, InvalidPath)
    assert refused.status == 400


@pytest.mark.parametrize(
    ("path", "raw", "canonical", "canonical_raw"),
    [
        ("/app//charges/./x/..", b"/app//charges/./x/..", "/app/charges/", b"/app/charges/"),
        ("/app/charges", b"/%61pp/charges", "/app/charges", b"/%61pp/charges"),  # kept as sent
        ("/app/charges", b"/charges", "/app/charges", b"/charges"),  # raw_path without the root
        ("/app/app/x", b"/app/x", "/app/app/x", b"/app/x"),
        ("/my app/x/../y", None, "/my app/y", b"/my%20app/y"),  # the prefix is not judged
        ("/app", b"/app", "/app", b"/app"),
    ],
)
def test_only_the_part_after_the_root_path_is_made_canonical(
    path: str, raw: bytes | None, canonical: str, canonical_raw: bytes
) -> None:
    root = path.split("/")[1]
    scope = _scope(path, raw, "/" + root)
    assert canonicalize(scope, allow_method_override=False) is None
    assert (scope["path"], scope["raw_path"], scope["root_path"]) == (
        canonical,
        canonical_raw,
        "/" + root,
    )


def test_without_a_root_path_a_dot_segment_is_resolved_as_before() -> None:
    scope = _scope("/app/../charges", b"/app/../charges", "")
    assert canonicalize(scope, allow_method_override=False) is None
    assert scope["path"] == "/charges"


def test_a_root_path_a_server_sends_encoded_is_taken_as_sent() -> None:
    # uvicorn --root-path /%7Euser: path = root + decoded target, raw_path = root + target.
    scope = _scope("/%7Euser/charges", b"/%7Euser/charges", "/%7Euser")
    assert canonicalize(scope, allow_method_override=False) is None
    assert (scope["path"], scope["raw_path"]) == ("/%7Euser/charges", b"/%7Euser/charges")
    climbing = _scope("/%7Euser/../admin", b"/%7Euser/../admin", "/%7Euser")
    assert isinstance(canonicalize(climbing, allow_method_override=False), InvalidPath)


def test_a_raw_path_that_is_neither_the_path_nor_its_part_after_the_root_is_refused() -> None:
    scope = _scope("/app/../x", b"//app/../x", "/app")
    refused = canonicalize(scope, allow_method_override=False)
    assert isinstance(refused, InvalidPath)
