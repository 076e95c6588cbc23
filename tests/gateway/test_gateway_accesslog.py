"""JSON access lines and the JSON formatter, read back as a log shipper would."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from _support import T0
from surefoot.events import LoggingHook, emit
from surefoot.gateway._accesslog import (
    ACCESS_LOGGER,
    AccessLog,
    JsonFormatter,
    access_record,
    iso_timestamp,
)
from surefoot.gateway._events import UpstreamFailed
from surefoot.idempotency._events import ResponseReplayed
from surefoot.testing import ManualClock

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEYS = [
    "ts", "request_id", "method", "path", "route", "status", "duration_ms", "client",
    "principal", "upstream_status", "bytes", "replayed",
]  # fmt: skip


class Captured:
    """A handler on one logger, with a formatter, and the lines it wrote."""

    def __init__(self, logger: logging.Logger, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.logger = logger

    @property
    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def capture() -> Iterator[Any]:
    """capture(logger_name, formatter) -> Captured; levels and handlers are restored."""
    undo: list[tuple[logging.Logger, logging.Handler, int]] = []

    def attach(name: str, formatter: logging.Formatter | None = None) -> Captured:
        logger = logging.getLogger(name)
        captured = Captured(logger, formatter or logging.Formatter("%(message)s"))
        undo.append((logger, captured.handler, logger.level))
        logger.addHandler(captured.handler)
        logger.setLevel(logging.DEBUG)
        return captured

    yield attach
    for logger, handler, level in undo:
        logger.removeHandler(handler)
        logger.setLevel(level)


def request(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "method": "POST",
        "path": "/orders/7",
        "route": "/orders/{id}",
        "status": 201,
        "duration": 0.0123456,
        "client": "203.0.113.9",
        "principal": "k:3f2a",
        "upstream_status": 201,
        "bytes_sent": 512,
        "replayed": False,
    }
    return fields | overrides


def test_access_record_has_its_fields_in_order() -> None:
    record = access_record(at=T0 + 0.1234, **request())
    assert list(record) == KEYS
    assert record == {
        "ts": "2023-11-14T22:13:20.123Z",
        "request_id": "r-1",
        "method": "POST",
        "path": "/orders/7",
        "route": "/orders/{id}",
        "status": 201,
        "duration_ms": 12.346,
        "client": "203.0.113.9",
        "principal": "k:3f2a",
        "upstream_status": 201,
        "bytes": 512,
        "replayed": False,
    }


def test_optional_fields_default_to_nothing_known() -> None:
    record = access_record(
        at=T0, request_id="r", method="GET", path="/x", route=None, status=404, duration=0.0
    )
    assert record["route"] is None
    assert record["client"] is None
    assert record["upstream_status"] is None
    assert (record["bytes"], record["replayed"], record["duration_ms"]) == (0, False, 0.0)


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T0, "2023-11-14T22:13:20.000Z"),
        (T0 + 0.9999, "2023-11-14T22:13:20.999Z"),  # truncated, never rounded into the next second
    ],
)
def test_timestamps_are_utc_iso_8601_with_milliseconds(at: float, text: str) -> None:
    assert iso_timestamp(at) == text
    assert ISO_MS.match(text)


def test_access_log_writes_one_json_line_per_request(capture: Any) -> None:
    captured = capture(ACCESS_LOGGER)  # a plain "%(message)s" handler
    access = AccessLog(clock=ManualClock(T0))
    access.log(**request())
    access.log(**request(request_id="r-2", status=201, replayed=True, upstream_status=None))
    assert len(captured.lines) == 2
    first, second = captured.objects
    assert list(first) == KEYS
    assert first["ts"] == "2023-11-14T22:13:20.000Z"
    assert (first["duration_ms"], first["bytes"], first["replayed"]) == (12.346, 512, False)
    assert (second["request_id"], second["replayed"], second["upstream_status"]) == (
        "r-2",
        True,
        None,
    )
    assert " " not in captured.lines[0].replace("/orders/{id}", "")  # compact separators


def test_access_log_lines_are_info_records_on_the_access_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    AccessLog(clock=ManualClock(T0)).log(**request())
    [record] = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.levelno == logging.INFO
    assert json.loads(record.getMessage())["request_id"] == "r-1"


def test_a_path_with_percent_signs_and_quotes_is_kept_verbatim(capture: Any) -> None:
    captured = capture(ACCESS_LOGGER)
    path = '/files/100%25/%s/"quoted"/\u00e9t\u00e9'
    AccessLog(clock=ManualClock(T0)).log(**request(path=path))
    assert captured.objects[0]["path"] == path


@pytest.mark.parametrize("formatter", [logging.Formatter("%(message)s"), JsonFormatter()])
def test_a_path_with_line_breaks_cannot_forge_a_line(
    capture: Any, formatter: logging.Formatter
) -> None:
    captured = capture(ACCESS_LOGGER, formatter)
    path = '/a\n{"ts":"forged"}\r\u2028\u2029\x85\x1b[2J\x00'
    AccessLog(clock=ManualClock(T0)).log(**request(path=path))
    [line] = captured.lines  # splitlines() also splits at \x85, \u2028 and \u2029
    assert line.isprintable()
    assert json.loads(line)["path"] == path


def test_event_fields_with_line_breaks_stay_on_one_json_line(capture: Any) -> None:
    captured = capture("surefoot.gateway", JsonFormatter())
    path = "/a\nforged\u2028line\x1b"
    event = UpstreamFailed(
        at=T0, request_id="r\n2", method="GET", path=path, route="/a", reason="reset",
        status=None, reached=True,
    )  # fmt: skip
    emit([LoggingHook()], event)
    [line] = captured.lines
    assert line.isprintable()
    assert json.loads(line)["surefoot"]["path"] == path


def test_nothing_is_built_or_written_when_the_logger_is_off(capture: Any) -> None:
    captured = capture("test.access.off")
    captured.logger.setLevel(logging.WARNING)
    access = AccessLog(logger=captured.logger, clock=ManualClock(T0))
    assert not access.enabled
    access.log(**request())
    assert captured.lines == []
    captured.logger.setLevel(logging.INFO)
    access.log(**request())
    assert len(captured.lines) == 1
    assert AccessLog(logger=captured.logger).enabled
    assert repr(access) == "AccessLog(logger='test.access.off')"


def test_the_formatter_renders_a_plain_record_as_json(capture: Any) -> None:
    captured = capture("test.json.plain", JsonFormatter())
    captured.logger.warning("upstream %s answered %d", "billing", 503)
    [line] = captured.lines
    obj = json.loads(line)
    assert obj == {
        "ts": obj["ts"],
        "level": "WARNING",
        "logger": "test.json.plain",
        "message": "upstream billing answered 503",
    }
    assert ISO_MS.match(obj["ts"])


def test_the_formatter_renders_event_fields_from_the_logging_hook(capture: Any) -> None:
    captured = capture("surefoot.idempotency", JsonFormatter())
    event = ResponseReplayed(
        at=T0, request_id="r-9", method="POST", path="/orders", principal="k:1",
        store_key="k:1:key", status=201,
    )  # fmt: skip
    emit([LoggingHook()], event)
    [obj] = captured.objects
    assert obj["logger"] == "surefoot.idempotency"
    assert obj["level"] == "INFO"
    assert obj["message"].startswith("idempotency.replayed ")
    assert obj["surefoot"] == {
        "at": T0, "request_id": "r-9", "method": "POST", "path": "/orders",
        "principal": "k:1", "store_key": "k:1:key", "status": 201,
    }  # fmt: skip


def test_the_formatter_makes_any_value_json_safe(capture: Any) -> None:
    captured = capture("test.json.values", JsonFormatter())

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    extra = {"obj": Opaque(), "retry_after": float("inf"), "nan": float("nan"), "tags": ("a",)}
    captured.logger.info("odd values", extra={"surefoot": extra})
    [line] = captured.lines
    assert "Infinity" not in line
    assert "NaN" not in line
    obj = json.loads(line)
    assert obj["surefoot"] == {"obj": "opaque!", "retry_after": "inf", "nan": "nan", "tags": ["a"]}


def test_the_formatter_includes_the_traceback(capture: Any) -> None:
    captured = capture("test.json.exc", JsonFormatter())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        captured.logger.exception("handler failed")
    [line] = captured.lines  # one line, even with a multi-line traceback
    obj = json.loads(line)
    assert obj["message"] == "handler failed"
    assert obj["exc"].startswith("Traceback")
    assert "RuntimeError: boom" in obj["exc"]


def test_the_formatter_keeps_a_stack_and_a_traceback_already_rendered() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("test.json.remote", logging.ERROR, __file__, 1, "lost", (), None)
    record.exc_text = "Traceback (most recent call last):\nValueError: far away"
    record.stack_info = "Stack (most recent call last):\n  here"
    obj = json.loads(formatter.format(record))
    assert obj["exc"].endswith("ValueError: far away")
    assert obj["stack"].endswith("here")


def test_the_formatter_gives_access_records_their_own_fields(capture: Any) -> None:
    captured = capture(ACCESS_LOGGER, JsonFormatter())
    AccessLog(clock=ManualClock(T0)).log(**request())
    [obj] = captured.objects
    assert list(obj) == ["ts", "level", "logger", *KEYS[1:]]
    assert obj["ts"] == "2023-11-14T22:13:20.000Z"
    assert (obj["level"], obj["logger"]) == ("INFO", ACCESS_LOGGER)
    assert obj["status"] == 201
    assert "message" not in obj


def test_the_formatter_renders_a_gateway_event(capture: Any) -> None:
    captured = capture("surefoot.gateway", JsonFormatter())
    event = UpstreamFailed(
        at=T0, request_id="r-3", method="GET", path="/a", route="/a", reason="timeout",
        status=None, reached=True,
    )  # fmt: skip
    emit([LoggingHook()], event)
    [obj] = captured.objects
    assert obj["level"] == "WARNING"
    assert obj["surefoot"]["reason"] == "timeout"
    assert obj["surefoot"]["status"] is None
