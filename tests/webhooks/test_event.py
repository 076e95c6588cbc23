"""``_event``: where event ids and ordering fields are read, and their bounds (every branch)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from surefoot.errors import (
    ConfigurationError,
    WebhookBodyNotJson,
    WebhookEventFieldInvalid,
    WebhookEventIdInvalid,
)
from surefoot.webhooks import EventId, Ordering
from surefoot.webhooks._event import Body, read_event_id, read_ordering


def body(document: Any) -> Body:
    return Body(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EventId(), "exactly one of header and field"),
        (lambda: EventId(header="a", field="b"), "exactly one of header and field"),
        (lambda: EventId(header="bad header"), "EventId.header: expected an HTTP header name"),
        (lambda: EventId(field="a..b"), "EventId.field: expected a dotted JSON field path"),
        (lambda: EventId(field=""), "EventId.field"),
        (lambda: Ordering(object_field="id", version_field="v", lease=0), "Ordering.lease"),
        (lambda: Ordering(object_field="id", version_field="v", lease=3601), "Ordering.lease"),
        (lambda: Ordering(object_field="", version_field="v"), "Ordering.object_field"),
        (lambda: Ordering(object_field="id", version_field="a b"), "Ordering.version_field"),
    ],
)
def test_bad_configuration_names_the_field(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_a_header_name_is_kept_in_lower_case() -> None:
    source = EventId(header="X-Delivery")
    assert (source.header, source.source) == ("x-delivery", "header x-delivery")
    assert EventId(field="data.id").source == "body field data.id"


@pytest.mark.parametrize(
    ("headers", "document", "source", "header_id", "field", "expected"),
    [
        ({"x-d": "d-1"}, {}, EventId(header="x-d"), "ignored", None, "d-1"),
        ({}, {"data": {"id": "evt_9"}}, EventId(field="data.id"), None, None, "evt_9"),
        ({}, {"data": {"id": 42}}, EventId(field="data.id"), None, None, "42"),
        ({}, {}, None, "msg_1", "id", "msg_1"),
        ({}, {"id": "evt_1"}, None, None, "id", "evt_1"),
        ({}, {"id": "~" * 255}, None, None, "id", "~" * 255),
    ],
)
def test_the_event_id_comes_from_the_first_source_that_applies(
    headers: dict[str, str],
    document: Any,
    source: EventId | None,
    header_id: str | None,
    field: str | None,
    expected: str,
) -> None:
    assert read_event_id(headers, body(document), source, header_id, field) == expected


@pytest.mark.parametrize(
    ("headers", "document", "source", "header_id", "field", "reason"),
    [
        ({}, {}, EventId(header="x-d"), None, None, "missing"),
        ({"x-d": ""}, {}, EventId(header="x-d"), None, None, "missing"),
        ({}, {}, None, None, None, "missing"),
        ({}, {"id": None}, None, None, "id", "missing"),
        ({}, {"id": True}, None, None, "id", "not a string"),
        ({}, {"id": ["a"]}, None, None, "id", "not a string"),
        ({}, {"id": 1.5}, None, None, "id", "not a string"),
        ({}, {"id": "x" * 256}, None, None, "id", "longer than 255 characters"),
        ({}, {"id": "a b"}, None, None, "id", "not printable ASCII"),
        ({}, {"id": "é"}, None, None, "id", "not printable ASCII"),
        ({}, {"data": "flat"}, EventId(field="data.id"), None, None, "missing"),
    ],
)
def test_an_event_id_out_of_bounds_is_refused_without_quoting_it(
    headers: dict[str, str],
    document: Any,
    source: EventId | None,
    header_id: str | None,
    field: str | None,
    reason: str,
) -> None:
    with pytest.raises(WebhookEventIdInvalid) as caught:
        read_event_id(headers, body(document), source, header_id, field)
    assert caught.value.fields["reason"] == reason
    assert "x" * 256 not in caught.value.detail


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_an_id_in_a_body_that_is_no_json_object_is_refused(raw: bytes) -> None:
    parsed = Body(raw)
    for _ in range(2):  # parsed once; the answer stays the same
        with pytest.raises(WebhookBodyNotJson, match="body field id"):
            read_event_id({}, parsed, None, None, "id")


ORDERING = Ordering(object_field="data.object.id", version_field="data.object.version")


def update(obj: Any, version: Any) -> Body:
    return body({"data": {"object": {"id": obj, "version": version}}})


@pytest.mark.parametrize(
    ("obj", "version", "expected"),
    [
        ("cus_1", 7, ("cus_1", 7.0)),
        (12, 1.5, ("12", 1.5)),
        ("cus_1", "2026-12-06T10:00:00Z", ("cus_1", 1796551200.0)),
        ("cus_1", "2026-12-06T11:00:00+01:00", ("cus_1", 1796551200.0)),
        ("o" * 255, 0, ("o" * 255, 0.0)),
    ],
)
def test_ordering_reads_the_object_and_its_version(
    obj: Any, version: Any, expected: tuple[str, float]
) -> None:
    assert read_ordering(ORDERING, update(obj, version)) == expected


@pytest.mark.parametrize(
    ("obj", "version", "field", "reason"),
    [
        (None, 1, "data.object.id", "missing"),
        ("", 1, "data.object.id", "not usable"),
        ("o" * 256, 1, "data.object.id", "not usable"),
        (True, 1, "data.object.id", "not usable"),
        ("cus_1", None, "data.object.version", "missing"),
        ("cus_1", True, "data.object.version", "not usable"),
        ("cus_1", "2026-12-06T10:00:00", "data.object.version", "not usable"),
        ("cus_1", "yesterday", "data.object.version", "not usable"),
        ("cus_1", "2" * 65, "data.object.version", "not usable"),
        ("cus_1", "", "data.object.version", "not usable"),
        ("cus_1", [1], "data.object.version", "not usable"),
        ("cus_1", 1e400, "data.object.version", "not usable"),
    ],
)
def test_an_ordering_field_out_of_bounds_is_refused(
    obj: Any, version: Any, field: str, reason: str
) -> None:
    with pytest.raises(WebhookEventFieldInvalid) as caught:
        read_ordering(ORDERING, update(obj, version))
    assert (caught.value.fields["field"], caught.value.fields["reason"]) == (field, reason)


def test_a_version_path_through_a_non_object_is_missing() -> None:
    flat = body({"data": {"object": {"id": "cus_1", "version": 3}}, "x": 1})
    ordering = Ordering(object_field="data.object.id", version_field="x.version")
    with pytest.raises(WebhookEventFieldInvalid, match="missing"):
        read_ordering(ordering, flat)
