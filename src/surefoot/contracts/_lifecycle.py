"""``Lifecycle``: a route's deprecation, sunset and brownouts, decided for one request.

A route ends its life in phases; ``Lifecycle.phase(now, client, critical)`` says which
one a request is in, and ``Lifecycle.headers(client)`` what its response announces::

    ANNOUNCED ──(deprecated)──► DEPRECATED ──(sunset)──► RETIRED
                                   │   ▲
                          (window) ▼   │ (window ends)
                                 BROWNOUT

Rule 1: a lifecycle applies to the clients it names (``clients``; None: to every client,
        anonymous ones included). A request it does not apply to is ``ACTIVE``: no header,
        no brownout, no retirement.
Rule 2: a request it applies to carries ``Deprecation`` (RFC 9745: a structured-field date,
        ``@`` and whole seconds since the epoch) in every phase, announced before the date
        too, as the RFC allows; ``Sunset`` (RFC 8594: an IMF-fixdate) when there is a
        sunset; and a ``Link`` with ``rel="deprecation"`` and one with ``rel="sunset"``
        when there are links.
Rule 3: a client's sunset is its extension (``extensions``, always later than the route's)
        or the route's. From that instant on, the client's requests are ``RETIRED``:
        answered 410 ``route_retired``, never forwarded.
Rule 4: once deprecated and before its sunset, a request inside a brownout window is
        ``BROWNOUT``: answered
        exactly as when ``RETIRED``, so integrators meet the sunset early, in short and
        announced windows. Clients marked critical are never browned out, unless
        ``brownout_critical``.
Rule 5: windows are the explicit ones and those of a weekly ``Schedule``: on each of its
        days, at its time of day (UTC), from ``starts`` until the sunset; each lasts
        ``duration`` at ``starts``, rising linearly to ``final_duration`` at the sunset.
        A window is a half-open interval ``[start, end)``, cut at the client's sunset.
Rule 6: a window lasts at most a day, so deciding a phase looks only at the explicit
        windows that started in the last day (found by bisection) and at the schedule's
        windows of today and yesterday: a request never walks a calendar.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate

__all__ = ["DAY", "WEEK", "Lifecycle", "Phase", "Schedule", "Window", "deprecation_field"]

DAY = 86400.0
WEEK = 7 * DAY
#: 1970-01-01, day 0 of the epoch, was a Thursday (Monday is 0).
_EPOCH_WEEKDAY = 3


class Phase(enum.Enum):
    """Where a request stands in its route's life (see the module)."""

    ACTIVE = "active"
    ANNOUNCED = "announced"
    DEPRECATED = "deprecated"
    BROWNOUT = "brownout"
    RETIRED = "retired"

    @property
    def refused(self) -> bool:
        """True when the request is answered 410 and never forwarded."""
        return self in (Phase.BROWNOUT, Phase.RETIRED)


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A brownout window, ``[start, end)`` in unix seconds."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """Weekly brownout windows (Rule 5).

    Args:
        days: weekdays, Monday 0 to Sunday 6.
        at: the windows' start, in seconds after midnight UTC.
        duration: the first window's length, in seconds.
        final_duration: the length at the sunset (None: ``duration`` throughout).
        starts: no window starts before this instant (unix seconds).
    """

    days: frozenset[int]
    at: float
    duration: float
    starts: float
    final_duration: float | None = None

    def __post_init__(self) -> None:
        if not self.days or not self.days <= set(range(7)):
            raise ValueError(f"days must be weekdays 0 to 6, got {sorted(self.days)}")
        if not 0 <= self.at < DAY:
            raise ValueError(f"at must be seconds from 0 to 86399, got {self.at:g}")
        if not 0 < self.duration <= DAY:
            raise ValueError(f"duration must be seconds from 1 to 86400, got {self.duration:g}")
        if self.final_duration is not None and not self.duration <= self.final_duration <= DAY:
            raise ValueError(
                f"final_duration must be from duration ({self.duration:g}) to 86400, "
                f"got {self.final_duration:g}"
            )

    def length(self, start: float, sunset: float | None) -> float:
        """The length of the window starting at ``start`` (Rule 5)."""
        final = self.final_duration
        if final is None or sunset is None or sunset <= self.starts:
            return self.duration
        share = min(max((start - self.starts) / (sunset - self.starts), 0.0), 1.0)
        return self.duration + (final - self.duration) * share

    def starts_on(self, day: int) -> float | None:
        """The start of day ``day``'s window (days since the epoch), or None."""
        if (day + _EPOCH_WEEKDAY) % 7 not in self.days:
            return None
        start = day * DAY + self.at
        return start if start >= self.starts else None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One route's deprecation (see the module).

    Example:
        >>> life = Lifecycle(deprecated=1_767_225_600.0, sunset=1_775_001_600.0,
        ...                  link="https://example.com/migrate")
        >>> life.phase(1_770_000_000.0).value
        'deprecated'

    Args:
        deprecated: when the route is (or was) deprecated, unix seconds.
        sunset: when it stops answering (None: not decided).
        link: the migration notes (``rel="deprecation"``).
        sunset_link: about the sunset (``rel="sunset"``; default: ``link``).
        replacement: what replaces the route, in words ("GET /v2/orders").
        clients: the client names it applies to (None: every client).
        extensions: client name -> a later sunset for that client.
        windows: explicit brownout windows.
        schedule: weekly brownout windows.
        brownout_critical: brown out critical clients too.
    """

    deprecated: float
    sunset: float | None = None
    link: str | None = None
    sunset_link: str | None = None
    replacement: str | None = None
    clients: frozenset[str] | None = None
    extensions: Mapping[str, float] = field(default_factory=dict)
    windows: tuple[Window, ...] = ()
    schedule: Schedule | None = None
    brownout_critical: bool = False
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _headers: dict[float | None, tuple[tuple[bytes, bytes], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.sunset is not None and self.sunset <= self.deprecated:
            raise ValueError("sunset must come after deprecated")
        for name, when in self.extensions.items():
            if self.sunset is None or when <= self.sunset:
                raise ValueError(f"the extension of {name!r} must come after the sunset")
        windows = tuple(sorted(self.windows))
        for window in windows:
            if not 0 < window.end - window.start <= DAY:
                raise ValueError(f"a window must last from 1 s to a day, got {window}")
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "_starts", tuple(w.start for w in windows))
        sunsets = {self.sunset, *self.extensions.values()}
        object.__setattr__(self, "_headers", {s: self._make_headers(s) for s in sunsets})

    # -- per request --------------------------------------------------------------------------

    def applies_to(self, client: str | None) -> bool:
        """Rule 1."""
        return self.clients is None or (client is not None and client in self.clients)

    def sunset_for(self, client: str | None) -> float | None:
        """Rule 3: the client's sunset."""
        if client is not None and self.extensions:
            return self.extensions.get(client, self.sunset)
        return self.sunset

    def phase(self, now: float, client: str | None = None, *, critical: bool = False) -> Phase:
        """The phase of a request from ``client`` at ``now`` (Rules 1, 3 and 4)."""
        if not self.applies_to(client):
            return Phase.ACTIVE
        sunset = self.sunset_for(client)
        if sunset is not None and now >= sunset:
            return Phase.RETIRED
        if now < self.deprecated:
            return Phase.ANNOUNCED
        if (not critical or self.brownout_critical) and self.in_window(now, sunset):
            return Phase.BROWNOUT
        return Phase.DEPRECATED

    def in_window(self, now: float, sunset: float | None) -> bool:
        """True when ``now`` is inside a brownout window before ``sunset`` (Rules 5, 6)."""
        if sunset is not None and now >= sunset:
            return False
        # A window lasts at most a day: one containing now started in (now - DAY, now].
        first = bisect.bisect_right(self._starts, now - DAY)
        last = bisect.bisect_right(self._starts, now)
        if any(now < self.windows[i].end for i in range(first, last)):
            return True
        schedule = self.schedule
        if schedule is None:
            return False
        day = int(now // DAY)
        for start in (schedule.starts_on(day), schedule.starts_on(day - 1)):
            if start is not None and start <= now < start + schedule.length(start, sunset):
                return True
        return False

    def headers(self, client: str | None = None) -> tuple[tuple[bytes, bytes], ...]:
        """The response header fields announcing the lifecycle to ``client`` (Rule 2)."""
        return self._headers[self.sunset_for(client)]

    # -- planning -----------------------------------------------------------------------------

    def windows_between(self, start: float, end: float, client: str | None = None) -> list[Window]:
        """Every brownout window overlapping ``[start, end)`` before the client's sunset,
        in order, each cut at the sunset (Rule 5): what the admin API and the consumer
        docs list."""
        sunset = self.sunset_for(client)
        stop = end if sunset is None else min(end, sunset)
        found = [w for w in self.windows if w.start < stop]
        found.extend(self._scheduled(start, stop, sunset))
        cut = {Window(w.start, w.end if sunset is None else min(w.end, sunset)) for w in found}
        return sorted(w for w in cut if w.end > start)

    def _scheduled(self, start: float, stop: float, sunset: float | None) -> Iterator[Window]:
        schedule = self.schedule
        if schedule is None:
            return
        day = int(start // DAY) - 1
        while day * DAY < stop:
            begin = schedule.starts_on(day)
            if begin is not None and begin < stop:
                end = begin + schedule.length(begin, sunset)
                if end > start:
                    yield Window(begin, end)
            day += 1

    def _make_headers(self, sunset: float | None) -> tuple[tuple[bytes, bytes], ...]:
        out = [(b"deprecation", deprecation_field(self.deprecated).encode())]
        if sunset is not None:
            out.append((b"sunset", formatdate(sunset, usegmt=True).encode()))
        links = []
        if self.link is not None:
            links.append(f'<{self.link}>; rel="deprecation"; type="text/html"')
        sunset_link = self.sunset_link or self.link
        if sunset is not None and sunset_link is not None:
            links.append(f'<{sunset_link}>; rel="sunset"; type="text/html"')
        if links:
            out.append((b"link", ", ".join(links).encode()))
        return tuple(out)


def deprecation_field(moment: float) -> str:
    """RFC 9745's ``Deprecation`` value: a structured-field date (RFC 9651), ``@`` and
    whole seconds since the epoch."""
    return f"@{int(moment // 1)}"
