from __future__ import annotations

import json
from pathlib import Path

import pytest

from surefoot.errors import (
    BackendError,
    ClientError,
    ConfigurationError,
    IdempotencyKeyMissing,
    StoreUnavailable,
    SurefootError,
    catalogue,
    catalogue_markdown,
    problem_body,
    problem_document,
)

DOCS = Path(__file__).parents[2] / "docs" / "errors.md"


def test_docs_errors_md_is_generated_from_the_catalogue() -> None:
    assert DOCS.read_text() == catalogue_markdown(), (
        "docs/errors.md is out of date: run `surefoot errors --markdown > docs/errors.md`"
    )


def test_codes_are_unique_and_every_leaf_is_catalogued() -> None:
    codes = [c.code for c in catalogue()]
    assert len(codes) == len(set(codes))
    assert ClientError not in catalogue()
    assert BackendError not in catalogue()
    assert {SurefootError, ConfigurationError, IdempotencyKeyMissing, StoreUnavailable} <= set(
        catalogue()
    )
    for cls in catalogue():
        assert cls.__doc__, f"{cls.__name__} needs a docstring for docs/errors.md"
        assert 400 <= cls.status <= 599


def test_subtrees_carry_their_status() -> None:
    assert issubclass(IdempotencyKeyMissing, ClientError)
    assert IdempotencyKeyMissing.status == 400
    assert issubclass(StoreUnavailable, BackendError)
    assert StoreUnavailable.status == 503
    assert ConfigurationError.status == 500


def test_problem_document_shape_and_custom_base() -> None:
    error = StoreUnavailable(retry_after=2)
    doc = problem_document(error, request_id="r1", base="https://api.example.com/errors")
    assert doc == {
        "type": "https://api.example.com/errors/store-unavailable",
        "title": "Service temporarily unavailable",
        "status": 503,
        "detail": error.detail,
        "code": "store_unavailable",
        "request_id": "r1",
        "retry_after": 2,
    }
    assert "Retry the same request (with the same idempotency key) in 2 seconds" in error.detail
    assert json.loads(problem_body(error, request_id="r1")) == problem_document(
        error, request_id="r1"
    )


def test_detail_never_carries_the_cause() -> None:
    error = StoreUnavailable(retry_after=1)
    error.__cause__ = OSError("password=hunter2")
    assert "hunter2" not in problem_body(error, request_id="r").decode()


def test_missing_detail_fields_are_a_programming_error() -> None:
    with pytest.raises(TypeError, match=r"StoreUnavailable needs \['retry_after'\]"):
        StoreUnavailable()


def test_configuration_errors_keep_their_message_out_of_the_problem() -> None:
    error = ConfigurationError("IdempotencyPolicy.ttl: expected seconds, got 5")
    assert str(error) == "IdempotencyPolicy.ttl: expected seconds, got 5"
    assert "ttl" not in problem_body(error, request_id="r").decode()
