"""``CapturedEvents``: a hook that keeps every event, to assert on what surefoot decided."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TypeVar

from surefoot.events import Event, EventHook

__all__ = ["CapturedEvents"]

E = TypeVar("E", bound=Event)

# Event names are stable across releases (``Event.name``); matching on them keeps this
# module free of the client's imports (httpx), so it works in any test suite.
_CLIENT = "client."
_ATTEMPT_FAILED = "client.attempt_failed"
# Name the attempt that was refused before it was sent (no token, no slot).
_REFUSED = ("client.throttle_refused", "client.bulkhead_full")


class CapturedEvents(EventHook):
    """An event hook that stores every event it receives, in order.

    Example:
        >>> events = CapturedEvents()
        >>> transport = ResilientTransport(inner, hooks=[events], sleep=RecordingSleep())
        >>> ...  # two GETs: the first failed twice with 503 and then got its answer
        >>> events.names()
        ['client.attempt_failed', 'client.retry_scheduled', 'client.attempt_failed', ...]
        >>> events.attempts
        [3]
        >>> events.reasons
        [['503', '503']]
        >>> events.of(RetrySucceeded)[0].status
        200

    Pass it wherever surefoot takes ``hooks=`` (transports, breakers, middlewares), or as
    ``extra_hooks=`` of ``load_integrations``. It is safe to share between threads and
    tasks.

    Warning:
        A request that succeeds at its first attempt emits no client event, so it does
        not appear in ``attempts``, ``reasons`` or ``requests()``: those describe the
        requests that had something happen to them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __call__(self, event: Event, /) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """Every event received, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    def of(self, event_type: type[E]) -> list[E]:
        """The events that are instances of ``event_type``, oldest first."""
        return [event for event in self.events if isinstance(event, event_type)]

    def names(self) -> list[str]:
        """The events' dotted names (``"client.attempt_failed"``...), oldest first."""
        return [event.name for event in self.events]

    def requests(self) -> dict[str, list[Event]]:
        """The client's events grouped by request id, requests in order of first event."""
        grouped: dict[str, list[Event]] = {}
        for event in self.events:
            if event.name.startswith(_CLIENT):
                grouped.setdefault(event.request_id, []).append(event)
        return grouped

    @property
    def attempts(self) -> list[int]:
        """How many attempts each logical request sent (the highest attempt its events name).

        One entry per request that emitted a client event, in order of its first event; an
        attempt refused before it was sent (open breaker, no throttle token or bulkhead
        slot) is not counted.
        """
        return [
            max((_sent(event) for event in events), default=0)
            for events in self.requests().values()
        ]

    @property
    def reasons(self) -> list[list[str]]:
        """Why each failed attempt failed (``"503"``, ``"ConnectError"``...), per request.

        Parallel to ``attempts``: one list per request, empty when no attempt failed
        (a request that only waited for a throttle token, say).
        """
        return [
            [str(event.reason) for event in events if event.name == _ATTEMPT_FAILED]  # type: ignore[attr-defined]
            for events in self.requests().values()
        ]

    def clear(self) -> None:
        """Forget every event received so far."""
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __repr__(self) -> str:
        return f"CapturedEvents({self.names()!r})"


def _sent(event: Event) -> int:
    """The attempts an event says were sent."""
    attempt = int(getattr(event, "attempt", 0))
    if event.name in _REFUSED and getattr(event, "refused", True):
        return attempt - 1
    return attempt
