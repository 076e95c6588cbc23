"""``CircuitBreaker``: stop calling an upstream that is failing, then probe it carefully.

resilience4j's model. States::

    CLOSED ──(failure or slow-call rate >= threshold, after minimum_calls)──► OPEN
    OPEN ──(open_wait elapsed; the next call)──► HALF_OPEN
    HALF_OPEN ──(half_open_calls probes done, rates below thresholds)──► CLOSED
    HALF_OPEN ──(probes done, a rate at or above its threshold)──► OPEN
    any ──force_open()──► FORCED_OPEN      any ──disable()──► DISABLED
    FORCED_OPEN / DISABLED ──reset()──► CLOSED

Rule 1: OPEN and FORCED_OPEN refuse every call with ``CircuitOpen`` (no network call);
        DISABLED permits every call and records nothing.
Rule 2: HALF_OPEN permits at most ``half_open_calls`` probes; later calls are refused
        until the probes have decided.
Rule 3: every permit belongs to the state generation it was issued in; a result that
        comes back after the state changed (a slow call started while CLOSED, ending
        after the breaker opened) is ignored, so old news never flips a newer decision.
Rule 4: the window holds the last ``window_size`` calls (``window="count"``) or the calls
        of the last ``window_size`` seconds (``window="time"``, one bucket per second);
        rates are computed only once it holds ``minimum_calls`` calls.
Rule 5: ``_Core`` is pure (``now`` is a parameter); ``CircuitBreaker`` adds a lock, the
        clock and events, so one breaker is safe to share between threads and tasks.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

from surefoot.clock import Clock, SystemClock
from surefoot.errors import CircuitOpen, ConfigurationError
from surefoot.events import Event, EventHook, LoggingHook, emit, wanted

__all__ = ["BreakerState", "BreakerStateChanged", "CallNotPermitted", "CircuitBreaker"]


class BreakerState(enum.Enum):
    __hash__ = object.__hash__

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerStateChanged(Event):
    """The breaker moved from one state to another."""

    name: ClassVar[str] = "breaker.state_changed"
    level: ClassVar[int] = logging.WARNING
    breaker: str
    from_state: str
    to_state: str
    failure_rate: float | None
    slow_call_rate: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class CallNotPermitted(Event):
    """A call was refused because the breaker is open."""

    name: ClassVar[str] = "breaker.not_permitted"
    level: ClassVar[int] = logging.INFO
    breaker: str
    state: str
    retry_after: float


class _Permit(NamedTuple):
    generation: int
    probe: bool


class _Window:
    """Outcomes of recent calls: (calls, failures, slow calls)."""

    def __init__(self, kind: Literal["count", "time"], size: int) -> None:
        self.kind = kind
        self.size = size
        self.calls = self.failures = self.slow = 0
        # count: one entry per call; time: [second, calls, failures, slow] per second.
        self._entries: deque[list[int]] = deque()

    def add(self, failed: bool, slow: bool, now: float) -> None:
        if self.kind == "count":
            self._entries.append([int(failed), int(slow)])
            if len(self._entries) > self.size:
                old = self._entries.popleft()
                self._forget(1, old[0], old[1])
        else:
            second = math.floor(now)
            self.expire(now)
            if not self._entries or self._entries[-1][0] != second:
                self._entries.append([second, 0, 0, 0])
            bucket = self._entries[-1]
            bucket[1] += 1
            bucket[2] += int(failed)
            bucket[3] += int(slow)
        self.calls += 1
        self.failures += int(failed)
        self.slow += int(slow)

    def expire(self, now: float) -> None:
        if self.kind != "time":
            return
        horizon = math.floor(now) - self.size
        while self._entries and self._entries[0][0] <= horizon:
            _, calls, failures, slow = self._entries.popleft()
            self._forget(calls, failures, slow)

    def _forget(self, calls: int, failures: int, slow: int) -> None:
        self.calls -= calls
        self.failures -= failures
        self.slow -= slow

    def clear(self) -> None:
        self._entries.clear()
        self.calls = self.failures = self.slow = 0


class _Core:
    """The breaker's state machine, without locks, clocks or events (see the rules above)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.cfg = breaker
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.opened_at = 0.0
        self.window = _Window(breaker.window, breaker.window_size)
        self.probes_issued = 0
        self.probes = _Window("count", breaker.half_open_calls)

    def acquire(self, now: float) -> _Permit | float:
        """A permit, or the seconds to wait before calls are permitted again."""
        state = self.state
        if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
            return _Permit(self.generation, False)
        if state is BreakerState.OPEN:
            ready_at = self.opened_at + self.cfg.open_wait
            if now < ready_at:
                return ready_at - now
            self._move(BreakerState.HALF_OPEN, now)
        if self.state is BreakerState.HALF_OPEN:
            if self.probes_issued < self.cfg.half_open_calls:
                self.probes_issued += 1
                return _Permit(self.generation, True)
            return 1.0  # probes are out; they decide soon
        return self.cfg.open_wait  # FORCED_OPEN: until an operator resets it

    def record(self, permit: _Permit, failed: bool, duration: float, now: float) -> None:
        if permit.generation != self.generation or self.state is BreakerState.DISABLED:
            return
        slow = duration >= self.cfg.slow_call_duration
        if self.state is BreakerState.CLOSED:
            self.window.add(failed, slow, now)
            if self._over(self.window, self.cfg.minimum_calls):
                self._move(BreakerState.OPEN, now)
        elif self.state is BreakerState.HALF_OPEN and permit.probe:
            self.probes.add(failed, slow, now)
            if self.probes.calls >= self.cfg.half_open_calls:
                over = self._over(self.probes, self.cfg.half_open_calls)
                self._move(BreakerState.OPEN if over else BreakerState.CLOSED, now)

    def release(self, permit: _Permit) -> None:
        if permit.generation == self.generation and permit.probe:
            self.probes_issued -= 1  # the probe decided nothing: let another go

    def rates(self, window: _Window) -> tuple[float, float] | None:
        if window.calls == 0:
            return None
        return window.failures / window.calls, window.slow / window.calls

    def _over(self, window: _Window, minimum: int) -> bool:
        if window.calls < minimum:
            return False
        failure_rate, slow_rate = window.failures / window.calls, window.slow / window.calls
        return (
            failure_rate >= self.cfg.failure_rate_threshold
            or slow_rate >= self.cfg.slow_call_rate_threshold
        )

    def _move(self, state: BreakerState, now: float) -> None:
        self.cfg._changed(self, self.state, state)
        self.state = state
        self.generation += 1
        self.probes_issued = 0
        self.probes.clear()
        if state is BreakerState.OPEN:
            self.opened_at = now
        if state is not BreakerState.HALF_OPEN:
            self.window.clear()


class CircuitBreaker:
    """A circuit breaker for one upstream (per host or per integration).

    Example:
        >>> breaker = CircuitBreaker(name="shipping", failure_rate_threshold=0.5,
        ...                          minimum_calls=20, open_wait=30)
        >>> transport = ResilientTransport(httpx.HTTPTransport(), breaker=breaker)

    Args:
        name: names the upstream in errors, events and logs.
        failure_rate_threshold: open when at least this share of recent calls failed.
        slow_call_rate_threshold: open when at least this share took ``slow_call_duration``
            or more (1.0 with the default duration: only when every call is slow).
        slow_call_duration: seconds from which a call counts as slow.
        window: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the last
            ``window_size`` seconds).
        window_size: calls or seconds.
        minimum_calls: calls the window must hold before the breaker may open.
        open_wait: seconds to stay open before letting probes through.
        half_open_calls: probes let through while half open; their rates decide.
        clock, hooks: time and event hooks (default: one ``LoggingHook``).

    Warning:
        Failure is the transport's verdict (connection errors, timeouts, retry statuses);
        a 404 or a 422 is the client's problem and does not count.
    """

    def __init__(
        self,
        *,
        name: str = "default",
        failure_rate_threshold: float = 0.5,
        slow_call_rate_threshold: float = 1.0,
        slow_call_duration: float = 60.0,
        window: Literal["count", "time"] = "count",
        window_size: int = 100,
        minimum_calls: int = 20,
        open_wait: float = 30.0,
        half_open_calls: int = 5,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
    ) -> None:
        checks: list[tuple[str, bool, str, object]] = [
            ("failure_rate_threshold", 0 < failure_rate_threshold <= 1, "a share in (0, 1]",
             failure_rate_threshold),
            ("slow_call_rate_threshold", 0 < slow_call_rate_threshold <= 1, "a share in (0, 1]",
             slow_call_rate_threshold),
            ("slow_call_duration", slow_call_duration > 0, "seconds > 0", slow_call_duration),
            ("window", window in ("count", "time"), "'count' or 'time'", window),
            ("window_size", window_size >= 1, "a whole number >= 1", window_size),
            ("minimum_calls", minimum_calls >= 1, "a whole number >= 1", minimum_calls),
            ("open_wait", open_wait > 0, "seconds > 0", open_wait),
            ("half_open_calls", half_open_calls >= 1, "a whole number >= 1", half_open_calls),
        ]  # fmt: skip
        for field, ok, expected, got in checks:
            if not ok:
                raise ConfigurationError(
                    f"CircuitBreaker.{field}: expected {expected}, got {got!r}"
                )
        self.name = name
        self.failure_rate_threshold = failure_rate_threshold
        self.slow_call_rate_threshold = slow_call_rate_threshold
        self.slow_call_duration = slow_call_duration
        self.window: Literal["count", "time"] = window
        self.window_size = window_size
        self.minimum_calls = minimum_calls
        self.open_wait = open_wait
        self.half_open_calls = half_open_calls
        self.clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self._lock = threading.Lock()
        self._core = _Core(self)

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker past its wait reports OPEN until a call comes)."""
        return self._core.state

    def acquire(self) -> _Permit:
        """A permit for one call; raises ``CircuitOpen`` while calls are suspended."""
        now = self.clock.now()
        with self._lock:
            permit = self._core.acquire(now)
            state = self._core.state
        if isinstance(permit, _Permit):
            return permit
        retry_after = max(1, math.ceil(permit))
        if wanted(self.hooks, CallNotPermitted):
            event = CallNotPermitted(
                at=now, request_id="", breaker=self.name, state=state.value, retry_after=permit
            )
            emit(self.hooks, event)
        raise CircuitOpen(integration=self.name, retry_after=retry_after)

    def on_result(
        self,
        permit: object,
        *,
        failed: bool,
        duration: float,
        status: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record how the call behind ``permit`` went."""
        assert isinstance(permit, _Permit)
        now = self.clock.now()
        with self._lock:
            self._core.record(permit, failed, duration, now)

    def release(self, permit: object) -> None:
        """The call behind ``permit`` ended without an outcome: count nothing."""
        assert isinstance(permit, _Permit)
        with self._lock:
            self._core.release(permit)

    def force_open(self) -> None:
        """Operators: refuse every call until ``reset``."""
        self._set(BreakerState.FORCED_OPEN)

    def disable(self) -> None:
        """Operators: permit every call and record nothing until ``reset``."""
        self._set(BreakerState.DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window."""
        self._set(BreakerState.CLOSED)

    def _set(self, state: BreakerState) -> None:
        now = self.clock.now()
        with self._lock:
            self._core._move(state, now)

    def _changed(self, core: _Core, old: BreakerState, new: BreakerState) -> None:
        # Called under the lock by _Core: build the event now, emit it (cheap hooks only).
        if old is new or not wanted(self.hooks, BreakerStateChanged):
            return
        window = core.probes if old is BreakerState.HALF_OPEN else core.window
        rates = core.rates(window)
        event = BreakerStateChanged(
            at=self.clock.now(),
            request_id="",
            breaker=self.name,
            from_state=old.value,
            to_state=new.value,
            failure_rate=rates[0] if rates else None,
            slow_call_rate=rates[1] if rates else None,
        )
        emit(self.hooks, event)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value})"
