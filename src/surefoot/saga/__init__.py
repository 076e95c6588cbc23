"""Sagas: workflows of steps, each undone in reverse order when a later one fails, whose
progress survives a crash at any point.

The pieces, from the pure ones up:

- ``_core`` (pure): the saga and step state machines, what each outcome does, and what
  runs next (``next_move``); the retry policy.
- ``_define`` (pure): ``Saga`` and ``Step``, the functions a step is made of, and how an
  exception is judged (final or transient).
- ``log`` (adapter): ``SagaLog``, the durable progress in SQLite or PostgreSQL tables,
  claims with leases and fences, and a person's actions (retry, compensate, resolve).
- ``worker`` (adapter): ``SagaWorker``, which claims due sagas and runs their steps, each
  outbound call carrying an idempotency key derived from the saga and the step.

See ``docs/sagas.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.saga._core import Retry, SagaState, StepState
from surefoot.saga._define import Saga, Step, StepContext, StepFailed, StepFunction
from surefoot.saga._events import SagaEvent, SagaFinished, SagaNeedsAttention, SagaStepFailed

if TYPE_CHECKING:
    from surefoot.saga.log import SagaLog, SagaRun, TimelineEntry
    from surefoot.saga.worker import SagaWorker
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.saga.log": ("SagaLog", "SagaRun", "TimelineEntry"),
            "surefoot.saga.worker": ("SagaWorker",),
        },
    )

__all__ = [
    "Retry",
    "Saga",
    "SagaEvent",
    "SagaFinished",
    "SagaLog",
    "SagaNeedsAttention",
    "SagaRun",
    "SagaState",
    "SagaStepFailed",
    "SagaWorker",
    "Step",
    "StepContext",
    "StepFailed",
    "StepFunction",
    "StepState",
    "TimelineEntry",
]
