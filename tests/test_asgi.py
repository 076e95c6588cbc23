"""``surefoot._asgi``: the request ids every layer reports."""

from __future__ import annotations

import os
import uuid

import pytest

from surefoot._asgi import new_request_id, request_id


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
