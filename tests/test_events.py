from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import pytest

from surefoot.events import Event, EventHook, LoggingHook, emit, wanted, wanting


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample(Event):
    name: ClassVar[str] = "sample.happened"
    level: ClassVar[int] = logging.WARNING
    limit: str
    wait: float


def test_logging_hook_writes_logfmt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="surefoot")
    LoggingHook()(Sample(at=1.5, request_id="r", limit='5 "per" second', wait=0.23999))
    [record] = caplog.records
    assert record.name == "surefoot.sample"
    assert record.getMessage() == (
        'sample.happened at=1.500 request_id=r limit="5 \\"per\\" second" wait=0.240'
    )
    assert record.surefoot["wait"] == 0.23999  # type: ignore[attr-defined]


def test_wanted_follows_logger_levels() -> None:
    hook = LoggingHook()
    logger = logging.getLogger("surefoot.sample")
    logger.setLevel(logging.ERROR)
    try:
        assert not wanted([hook], Sample)
        assert wanted([hook, lambda event: None], Sample)  # a plain callable wants all
        logger.setLevel(logging.DEBUG)
        assert wanted([hook], Sample)
    finally:
        logger.setLevel(logging.NOTSET)


def test_wanting_answers_as_wanted_does() -> None:
    quiet, loud = LoggingHook(), LoggingHook(logger_prefix="loud")
    logging.getLogger("surefoot.sample").setLevel(logging.ERROR)
    try:
        everyone: list[EventHook] = [lambda event: None]
        cases: list[list[EventHook]] = [
            [],
            [quiet],
            [quiet, quiet],
            [quiet, loud],
            [quiet, *everyone],
        ]
        for hooks in cases:
            assert wanting(hooks)(Sample) == wanted(hooks, Sample), hooks
        assert not wanting([quiet])(Sample)
        assert wanting([quiet, *everyone])(Sample)
        logging.getLogger("surefoot.sample").setLevel(logging.DEBUG)
        assert wanting([quiet])(Sample)  # asked each time, not decided once
    finally:
        logging.getLogger("surefoot.sample").setLevel(logging.NOTSET)


def test_a_failing_hook_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    emit([broken, seen.append], Sample(at=0.0, request_id="r", limit="x", wait=0.0))
    assert len(seen) == 1
    assert "hook" in caplog.text


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/a\n2024-01-01 INFO forged", '"/a\\n2024-01-01 INFO forged"'),
        ("/a\r\nx", '"/a\\r\\nx"'),
        ("/a\x1b[31mred", '"/a\\x1b[31mred"'),
        ("/a\u2028b\u202ec\x85d\x00", '"/a\\u2028b\\u202ec\\x85d\\x00"'),
        ('/a\\"\n', '"/a\\\\\\"\\n"'),
        ("/plain", "/plain"),
        ("/caf\u00e9", "/caf\u00e9"),  # printable text stays as it is
    ],
)
def test_logging_hook_escapes_what_could_forge_a_line(
    caplog: pytest.LogCaptureFixture, path: str, written: str
) -> None:
    caplog.set_level(logging.INFO, logger="surefoot")
    LoggingHook()(Sample(at=1.5, request_id="r", limit=path, wait=0.0))
    [record] = caplog.records
    message = record.getMessage()
    assert message == f"sample.happened at=1.500 request_id=r limit={written} wait=0.000"
    assert message.isprintable()
    assert record.surefoot["limit"] == path  # type: ignore[attr-defined]
