"""``StoreHealth``: is the store down, and when to try it again (sans-I/O).

The rate limiter and the idempotency middleware ask it before each store call. While the
store is healthy every request calls it. After a failure the store is *down*: requests
skip it and go straight to their policy's outage behaviour, so they do not each wait for
the store's timeout, and one request at a time (the *probe*) tries the real store again
after a backoff that starts at ``initial_backoff`` and doubles up to ``max_backoff``,
shortened by up to ``jitter`` of itself at random so that many processes do not probe in
step. States and transitions (inputs in capitals)::

    HEALTHY ──FAILED──► DOWN ──PROBE_DUE──► PROBING ──SUCCEEDED──► HEALTHY
                         ▲                   │   ▲  │
                         └─FAILED, ABANDONED─┘   └──┘ PROBE_DUE (the probe out is lost)

    input       what happened
    CALL        a request wants the store and no probe is due
    PROBE_DUE   a request wants the store, and the backoff has elapsed (DOWN) or the
                probe out has not reported for ``max_backoff`` seconds (PROBING: lost)
    SUCCEEDED   the store answered the call
    FAILED      the call failed (``StoreUnavailable``, a timeout, a driver error)
    ABANDONED   the call was cancelled before the store answered

Rule 1: HEALTHY permits every call; DOWN and PROBING permit none but the probe, so during
        an outage no request but the probe waits for the store.
Rule 2: at most one probe is out at a time. A probe that never reports (its task hung
        without a timeout) is presumed lost after ``max_backoff`` seconds and replaced.
Rule 3: every permit belongs to the state generation it was issued in, and a report from
        an older generation is ignored: the many calls in flight when the store fails
        start one outage, not many, and a slow success from before the outage cannot end it.
Rule 4: an outage begins exactly once (HEALTHY -> DOWN) and ends exactly once
        (PROBING -> HEALTHY, with its duration): each returns a ``HealthChange`` that the
        adapter turns into one ``StoreDown`` or ``StoreRecovered`` event. Failed probes
        change nothing that is reported here (the adapters report each failed call).
Rule 5: a failed probe doubles the backoff (up to ``max_backoff``); an abandoned probe
        leaves it and lets the next request probe at once. Recovery resets it.
Rule 6: ``now`` is always a parameter and randomness comes from the ``random`` given at
        construction, so tests drive it with a ``ManualClock`` and a seeded ``Random``. A
        wall clock that jumps back cannot postpone a probe by more than ``max_backoff``.

One ``StoreHealth`` tracks one store; pass the same instance to the rate limiter and the
idempotency middleware when they share a store, so an outage found by one spares the
other the wait. Its steps never await and each holds a lock (held for a few dictionary
look-ups, never across I/O), so it serves one event loop and the threads of the sync
guards (``surefoot.wsgi``) alike.

Rule 7: every step (``permit``, ``succeeded``, ``failed``, ``abandoned``) runs under the
        instance's lock, so threads see one sequence of transitions: one probe out, one
        ``HealthChange`` per outage begun or ended.
Rule 8: a report whose (state, input) pair is not in the transition table is stale and
        ignored (None), never an error raised into the request.
"""

from __future__ import annotations

import enum
import logging
import random as _random
import threading
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, NoReturn

from surefoot.errors import ConfigurationError
from surefoot.events import Event

__all__ = [
    "HealthChange",
    "HealthState",
    "Permit",
    "StoreDown",
    "StoreHealth",
    "StoreRecovered",
    "failure_name",
    "health_event",
]


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    DOWN = "down"
    PROBING = "probing"


class _Input(enum.Enum):
    CALL = "call"
    PROBE_DUE = "probe_due"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"


_H, _D, _P = HealthState.HEALTHY, HealthState.DOWN, HealthState.PROBING

#: (state, input) -> next state. A pair that is not here cannot happen once stale
#: reports are dropped (Rule 3): DOWN issues no permit to call, so nothing reports in it,
#: and HEALTHY has no probe to be due. Should one come all the same, it is stale (Rule 8).
_TRANSITIONS: dict[tuple[HealthState, _Input], HealthState] = {
    (_H, _Input.CALL): _H,
    (_H, _Input.SUCCEEDED): _H,
    (_H, _Input.FAILED): _D,
    (_H, _Input.ABANDONED): _H,
    (_D, _Input.CALL): _D,
    (_D, _Input.PROBE_DUE): _P,
    (_P, _Input.CALL): _P,
    (_P, _Input.PROBE_DUE): _P,
    (_P, _Input.SUCCEEDED): _H,
    (_P, _Input.FAILED): _D,
    (_P, _Input.ABANDONED): _D,
}


class Permit(NamedTuple):
    """Whether to call the store now, and under which generation to report the result."""

    #: True: call the store (and report how it went); False: it is down, do not call it.
    call: bool
    #: True: this call is the one probe of a store that was down.
    probe: bool
    generation: int


class HealthChange(NamedTuple):
    """An outage began (``state`` DOWN) or ended (``state`` HEALTHY)."""

    state: HealthState
    #: When the outage began.
    down_since: float
    #: Seconds the outage lasted (0 when it begins).
    duration: float
    #: Probes that failed during the outage.
    failed_probes: int


class StoreHealth:
    """Outage tracking with backoff for one store (see the module docstring).

    Example:
        >>> health = StoreHealth(initial_backoff=0.5, max_backoff=30)
        >>> app = IdempotencyMiddleware(app, store=store, store_health=health)
        >>> app = RateLimitMiddleware(app, store=store, policies=policies, store_health=health)

    Args:
        initial_backoff: seconds from the first failure to the first probe.
        max_backoff: the longest wait between probes (each failed probe doubles the wait).
        jitter: share of each wait taken off at random (0 to 1; 0: exact waits).
        random: the source of randomness (tests pass a seeded ``random.Random``).
    """

    def __init__(
        self,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: float = 0.5,
        random: _random.Random | None = None,
    ) -> None:
        if not initial_backoff > 0:
            _fail("initial_backoff", "seconds > 0", initial_backoff)
        if not max_backoff >= initial_backoff:
            _fail("max_backoff", f"seconds >= initial_backoff ({initial_backoff})", max_backoff)
        if not 0 <= jitter < 1:
            _fail("jitter", "a share from 0 up to (not including) 1", jitter)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.random = random if random is not None else _random.Random()
        self._state = HealthState.HEALTHY
        self._generation = 0
        self._call = Permit(True, False, 0)  # the permit of every call while HEALTHY
        self._backoff = self.initial_backoff
        self._down_since = 0.0
        self._next_probe_at = 0.0
        self._probe_started_at = 0.0
        self._failed_probes = 0
        self._lock = threading.Lock()

    @property
    def state(self) -> HealthState:
        return self._state

    @property
    def healthy(self) -> bool:
        """True when the store is believed up (no outage in progress)."""
        return self._state is HealthState.HEALTHY

    def retry_after(self, now: float) -> float:
        """Seconds until the next probe may run (0 when healthy or a probe is out)."""
        if self._state is not HealthState.DOWN:
            return 0.0
        return max(0.0, min(self._next_probe_at - now, self.max_backoff))

    # -- inputs --------------------------------------------------------------------------

    def permit(self, now: float) -> Permit:
        """Ask before a store call: call it, probe it, or skip it (``call`` False)."""
        if self._state is HealthState.HEALTHY:
            return self._call  # one read: a stale permit is dropped when it reports (Rule 3)
        with self._lock:
            return self._permit(now)

    def _permit(self, now: float) -> Permit:
        """``permit`` under the lock: the state may have changed since it was read."""
        state = self._state
        if state is HealthState.HEALTHY:
            return self._call
        if state is HealthState.DOWN:
            due = now >= self._next_probe_at or self._next_probe_at - now > self.max_backoff
        else:
            due = abs(now - self._probe_started_at) >= self.max_backoff
        self._step(_Input.PROBE_DUE if due else _Input.CALL)
        if not due:
            return Permit(False, False, self._generation)
        self._probe_started_at = now
        return Permit(True, True, self._generation)

    def succeeded(self, permit: Permit, now: float) -> HealthChange | None:
        """The store answered the call; returns the change if this ended an outage."""
        if not permit.probe:
            return None  # a call while healthy: nothing changes (Rule 3)
        with self._lock:
            if permit.generation != self._generation:
                return None  # stale (Rule 3)
            down_since, failed = self._down_since, self._failed_probes
            if not self._step(_Input.SUCCEEDED):
                return None
            self._backoff = self.initial_backoff
            self._failed_probes = 0
        return HealthChange(HealthState.HEALTHY, down_since, max(0.0, now - down_since), failed)

    def failed(self, permit: Permit, now: float) -> HealthChange | None:
        """The call failed; returns the change if this began an outage."""
        if not permit.call:
            return None
        with self._lock:
            if permit.generation != self._generation:
                return None
            began = self._state is HealthState.HEALTHY
            if not self._step(_Input.FAILED):
                return None
            if began:
                self._down_since = now
                self._backoff = self.initial_backoff
                self._failed_probes = 0
            else:
                self._failed_probes += 1
                self._backoff = min(self._backoff * 2, self.max_backoff)
            wait = self._backoff * (1 - self.jitter * self.random.random())
            self._next_probe_at = now + wait
        if began:
            return HealthChange(HealthState.DOWN, now, 0.0, 0)
        return None

    def abandoned(self, permit: Permit, now: float) -> None:
        """The call was cancelled before the store answered: it tells nothing."""
        if not permit.probe:
            return
        with self._lock:
            if permit.generation != self._generation or not self._step(_Input.ABANDONED):
                return
            self._next_probe_at = now  # let the next request probe at once (Rule 5)

    def _step(self, event: _Input) -> bool:
        """Take the transition of ``event`` (the caller holds the lock); False when the
        (state, input) pair has none: a stale report, ignored (Rule 8)."""
        new = _TRANSITIONS.get((self._state, event))
        if new is None:
            return False
        if new is not self._state or event is _Input.PROBE_DUE:
            # The generation and the healthy permit before the state: a thread on the
            # lock-free healthy path that sees HEALTHY also sees the current permit.
            self._generation += 1
            if new is HealthState.HEALTHY:
                self._call = Permit(True, False, self._generation)
            self._state = new
        return True

    def __repr__(self) -> str:
        return (
            f"StoreHealth(state={self._state.value}, initial_backoff={self.initial_backoff}, "
            f"max_backoff={self.max_backoff}, jitter={self.jitter})"
        )


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreDown(Event):
    """A store call failed and an outage began: requests skip the store until a probe succeeds.

    ``request_id`` is the request that found the outage; ``layer`` is ``"ratelimit"`` or
    ``"idempotency"``.
    """

    name: ClassVar[str] = "storage.down"
    level: ClassVar[int] = logging.ERROR
    store: str  # the store's class name
    layer: str
    error: str  # the failure's class name, never its text


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreRecovered(Event):
    """A probe succeeded: the outage that began ``duration`` seconds ago is over."""

    name: ClassVar[str] = "storage.recovered"
    level: ClassVar[int] = logging.WARNING
    store: str
    layer: str
    duration: float
    failed_probes: int


def health_event(
    change: HealthChange, *, at: float, request_id: str, store: object, layer: str, error: str
) -> StoreDown | StoreRecovered:
    """The event of ``change``, for the adapter to emit."""
    if change.state is HealthState.DOWN:
        return StoreDown(
            at=at, request_id=request_id, store=_store_name(store), layer=layer, error=error
        )
    return StoreRecovered(
        at=at,
        request_id=request_id,
        store=_store_name(store),
        layer=layer,
        duration=change.duration,
        failed_probes=change.failed_probes,
    )


def _store_name(store: object) -> str:
    """The store's class name; a wrapper (a ``surefoot.storage.StoreWrapper``, such as
    ``surefoot.metrics.InstrumentedStore`` or ``surefoot.testing.FlakyStore``) names what it
    wraps."""
    return type(getattr(store, "wrapped", store)).__name__


def failure_name(exc: BaseException) -> str:
    """A store failure's class name for events: its text may hold secrets and is never sent.

    The cause's name when there is one (``StoreUnavailable`` raised from a driver's
    ``ConnectionError`` is reported as ``ConnectionError``); ``TimeoutError`` for a guard
    timeout.
    """
    if isinstance(exc, TimeoutError):
        return "TimeoutError"
    return type(exc.__cause__ or exc).__name__


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"StoreHealth.{name}: expected {expected}, got {got!r}")
