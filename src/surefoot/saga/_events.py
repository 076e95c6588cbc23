"""Events of saga workers: a step's action, lookup or compensation failed, and a saga
finished (completed or compensated) or waits for a person. ``request_id`` is the saga's
id; errors are the exception's type and message, cut at 500 characters."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = ["SagaEvent", "SagaFinished", "SagaNeedsAttention", "SagaStepFailed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaEvent(Event):
    name: ClassVar[str] = "saga.event"

    saga: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaStepFailed(SagaEvent):
    """A step function raised. ``function``: ``action``, ``lookup`` or ``compensation``;
    ``final``: a business failure (the saga turns back) rather than a transient one."""

    name: ClassVar[str] = "saga.step_failed"
    level: ClassVar[int] = logging.WARNING
    step: str
    function: str
    attempt: int
    final: bool
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaFinished(SagaEvent):
    """A saga reached ``completed`` or ``compensated``."""

    name: ClassVar[str] = "saga.finished"
    state: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaNeedsAttention(SagaEvent):
    """A saga stopped where only a person can go on: ``error`` says why."""

    name: ClassVar[str] = "saga.needs_attention"
    level: ClassVar[int] = logging.ERROR
    error: str
