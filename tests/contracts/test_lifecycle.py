"""``Lifecycle``: the announcing headers, the phases, brownout windows, a reference model.

The headers are read back with real parsers (``http_sf`` for RFC 9651's date item,
``email.utils`` for the IMF-fixdate, a small RFC 8288 reader for ``Link``). Phases are
decided at explicit ``now`` values, boundaries included. The reference model enumerates
every brownout window day by day with ``datetime``'s own weekdays and scans them all:
``phase()``, ``in_window()`` and ``windows_between()`` must agree with it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import http_sf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.contracts import Lifecycle, Phase, Schedule, Window, deprecation_field
from surefoot.contracts._lifecycle import DAY

HOUR = 3600.0


def ts(year: int, month: int, day: int, hour: int = 0) -> float:
    """A UTC calendar instant as unix seconds."""
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


def utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


D = ts(2027, 1, 1)  # deprecated
S = ts(2027, 4, 1)  # sunset
EXT = ts(2027, 6, 1)  # beta's extension
LINK = "https://example.com/migrate"
SUNSET_LINK = "https://example.com/sunset"

_LINK_VALUE = re.compile(
    r'\s*<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*=\s*(?:"[^"]*"|[^;,\s]*))*)\s*(?:,|$)'
)
_LINK_PARAM = re.compile(r';\s*([^;,=\s]+)\s*=\s*(?:"([^"]*)"|([^;,\s]*))')


def parse_links(value: str) -> list[tuple[str, dict[str, str]]]:
    """An RFC 8288 ``Link`` field value: (target, params) per link, in order."""
    links: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(value):
        match = _LINK_VALUE.match(value, pos)
        assert match is not None, f"unreadable Link at {pos}: {value!r}"
        assert match.end() > pos
        params = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _LINK_PARAM.finditer(match.group(2))
        }
        links.append((match.group(1), params))
        pos = match.end()
    return links


def fields(life: Lifecycle, client: str | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in life.headers(client):
        assert name == name.lower()
        out.setdefault(name.decode("ascii"), []).append(value.decode("ascii"))
    return out


def rels(life: Lifecycle, client: str | None = None) -> dict[str, str]:
    links = [link for value in fields(life, client).get("link", []) for link in parse_links(value)]
    found = {params["rel"]: target for target, params in links}
    assert len(found) == len(links), "a rel appears twice"
    return found


def deprecation_of(life: Lifecycle, client: str | None = None) -> datetime:
    (value,) = fields(life, client)["deprecation"]
    parsed = http_sf.parse(value.encode(), tltype="item")
    assert isinstance(parsed, tuple)
    item, params = parsed
    assert params == {}
    assert isinstance(item, datetime)
    return item


def sunset_of(life: Lifecycle, client: str | None = None) -> datetime | None:
    values = fields(life, client).get("sunset")
    if values is None:
        return None
    (value,) = values
    # An IMF-fixdate: "Thu, 01 Apr 2027 00:00:00 GMT".
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", value)
    return parsedate_to_datetime(value)


# --- headers ------------------------------------------------------------------------------


def test_headers_carry_the_dates_and_links() -> None:
    life = Lifecycle(deprecated=D, sunset=S, link=LINK)
    assert list(fields(life)) == ["deprecation", "sunset", "link"]
    assert deprecation_of(life) == utc(D)
    assert sunset_of(life) == utc(S)
    # The sunset link defaults to the migration notes.
    assert rels(life) == {"deprecation": LINK, "sunset": LINK}
    links = parse_links(fields(life)["link"][0])
    assert [params["type"] for _, params in links] == ["text/html", "text/html"]


def test_a_sunset_link_of_its_own() -> None:
    life = Lifecycle(deprecated=D, sunset=S, link=LINK, sunset_link=SUNSET_LINK)
    assert rels(life) == {"deprecation": LINK, "sunset": SUNSET_LINK}
    only = Lifecycle(deprecated=D, sunset=S, sunset_link=SUNSET_LINK)
    assert rels(only) == {"sunset": SUNSET_LINK}


def test_without_a_sunset_nothing_announces_one() -> None:
    life = Lifecycle(deprecated=D, link=LINK, sunset_link=SUNSET_LINK)
    assert list(fields(life)) == ["deprecation", "link"]
    assert sunset_of(life) is None
    assert rels(life) == {"deprecation": LINK}


def test_without_links_there_is_no_link_field() -> None:
    life = Lifecycle(deprecated=D, sunset=S)
    assert list(fields(life)) == ["deprecation", "sunset"]
    assert Lifecycle(deprecated=D).headers() == ((b"deprecation", f"@{int(D)}".encode()),)


def test_a_client_with_an_extension_is_announced_its_own_sunset() -> None:
    life = Lifecycle(deprecated=D, sunset=S, link=LINK, extensions={"beta": EXT}, clients=None)
    assert sunset_of(life, "beta") == utc(EXT)
    assert sunset_of(life, "acme") == utc(S)
    assert sunset_of(life, None) == utc(S)
    assert deprecation_of(life, "beta") == deprecation_of(life, "acme") == utc(D)
    assert rels(life, "beta") == {"deprecation": LINK, "sunset": LINK}


@pytest.mark.parametrize(
    ("moment", "second"),
    [
        (D, int(D)),
        (D + 0.75, int(D)),  # whole seconds: the second it falls in
        (0.0, 0),
        (-4.5, -5),
        (1.0e10 + 0.999, 10_000_000_000),
    ],
)
def test_deprecation_field_is_a_structured_date(moment: float, second: int) -> None:
    value = deprecation_field(moment)
    assert value == f"@{second}"
    parsed = http_sf.parse(value.encode(), tltype="item")
    assert isinstance(parsed, tuple)
    item, params = parsed
    assert item == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=second)
    assert params == {}


def test_deprecation_header_of_a_fractional_instant_is_its_second() -> None:
    life = Lifecycle(deprecated=D + 0.5, sunset=S + 0.5)
    assert deprecation_of(life) == utc(D)
    assert sunset_of(life) == utc(S)


# --- phases -------------------------------------------------------------------------------

W0 = ts(2027, 2, 10, 14)  # an hour-long brownout between the deprecation and the sunset
EARLY = ts(2026, 12, 20, 9)  # an hour-long brownout while the deprecation is only announced
AFTER = S + DAY  # an hour-long window after the route's sunset, inside beta's extension

NAMED = Lifecycle(
    deprecated=D,
    sunset=S,
    clients=frozenset({"acme", "beta", "crit"}),
    extensions={"beta": EXT},
    windows=(
        Window(W0, W0 + HOUR),
        Window(S - 1800, S + 1800),  # straddles the sunset
        Window(AFTER, AFTER + HOUR),
        Window(EARLY, EARLY + HOUR),
    ),
)

A, DE, B, R, ACT = Phase.ANNOUNCED, Phase.DEPRECATED, Phase.BROWNOUT, Phase.RETIRED, Phase.ACTIVE


@pytest.mark.parametrize(
    ("now", "client", "critical", "phase"),
    [
        (D - 1, "acme", False, A),
        (D - 0.001, "acme", False, A),
        (D, "acme", False, DE),
        (D + 1, "acme", False, DE),
        (EARLY, "acme", False, A),  # a window never browns out a route only announced
        (EARLY + HOUR, "acme", False, A),
        # An explicit window, [start, end) exactly.
        (W0 - 0.001, "acme", False, DE),
        (W0, "acme", False, B),
        (W0 + HOUR - 0.001, "acme", False, B),
        (W0 + HOUR, "acme", False, DE),
        # The sunset: RETIRED from the instant on, even inside a window.
        (S - 1800, "acme", False, B),
        (S - 0.001, "acme", False, B),
        (S, "acme", False, R),
        (S + 1, "acme", False, R),
        (AFTER + 1, "acme", False, R),
        (EXT + 1, "acme", False, R),
        # beta's extension moves its retirement; the windows before it still apply.
        (S - 0.001, "beta", False, B),
        (S, "beta", False, B),
        (S + 1800, "beta", False, DE),
        (AFTER, "beta", False, B),
        (AFTER + HOUR, "beta", False, DE),
        (EXT - 0.001, "beta", False, DE),
        (EXT, "beta", False, R),
        (EXT + DAY, "beta", False, R),
        # Clients it does not name: no phase at all, whatever the date.
        (D - 1, "other", False, ACT),
        (W0, "other", False, ACT),
        (S, "other", False, ACT),
        (EXT + 1, "other", False, ACT),
        (W0, None, False, ACT),
        (S + 1, None, False, ACT),
        # A critical client is never browned out, but it is retired.
        (W0, "crit", True, DE),
        (S - 1, "crit", True, DE),
        (EARLY, "crit", True, A),
        (S, "crit", True, R),
        (W0, "crit", False, B),  # the same client, not marked critical by this request
    ],
)
def test_phase(now: float, client: str | None, critical: bool, phase: Phase) -> None:
    assert NAMED.phase(now, client, critical=critical) is phase


@pytest.mark.parametrize(
    ("now", "phase"), [(W0, B), (W0 + HOUR, DE), (S - 1, B), (S, R), (D - 1, A)]
)
def test_brownout_critical_browns_out_critical_clients_too(now: float, phase: Phase) -> None:
    life = Lifecycle(
        deprecated=D,
        sunset=S,
        windows=(Window(W0, W0 + HOUR), Window(S - 10, S + 10)),
        brownout_critical=True,
    )
    assert life.phase(now, "crit", critical=True) is phase


@pytest.mark.parametrize(
    ("now", "client", "phase"),
    [
        (D - 1, None, A),
        (D, None, DE),
        (S, None, R),
        (S - 1, "anyone", DE),
        (S, "anyone", R),
        (S, "beta", DE),  # an extension, without clients: everyone else retires
        (EXT, "beta", R),
    ],
)
def test_without_clients_it_applies_to_everyone(
    now: float, client: str | None, phase: Phase
) -> None:
    life = Lifecycle(deprecated=D, sunset=S, extensions={"beta": EXT})
    assert life.applies_to(client)
    assert life.phase(now, client) is phase


def test_without_a_sunset_a_route_is_never_retired() -> None:
    life = Lifecycle(deprecated=D, windows=(Window(W0, W0 + HOUR),))
    assert life.phase(D + 1e9) is DE
    assert life.phase(W0) is B
    assert life.sunset_for("beta") is None


def test_refused_phases() -> None:
    assert {p for p in Phase if p.refused} == {Phase.BROWNOUT, Phase.RETIRED}


# --- the weekly schedule -----------------------------------------------------------------


def week_of(first: datetime) -> list[datetime]:
    return [first + timedelta(days=n) for n in range(7)]


@pytest.mark.parametrize("weekday", range(7))
def test_a_schedule_browns_out_on_its_weekday_at_its_time(weekday: int) -> None:
    start = datetime(2027, 1, 4, tzinfo=UTC)
    tuesday = datetime(2027, 1, 5, tzinfo=UTC)
    assert tuesday.weekday() == 1  # checked, not trusted
    at = 10 * HOUR + 15 * 60
    life = Lifecycle(
        deprecated=D,
        sunset=S,
        schedule=Schedule(days=frozenset({weekday}), at=at, duration=600, starts=D),
    )
    for day in week_of(start) + week_of(start + timedelta(days=28)):
        t = day.timestamp() + at
        expected = B if day.weekday() == weekday else DE
        assert life.phase(t, "x") is expected, day
        assert life.phase(t + 599.999, "x") is expected, day
        assert life.phase(t - 0.001, "x") is DE
        assert life.phase(t + 600, "x") is DE


def test_a_schedule_starts_at_starts() -> None:
    at = 12 * HOUR
    first = ts(2027, 1, 10)
    schedule = Schedule(days=frozenset(range(7)), at=at, duration=600, starts=first + at + 1)
    life = Lifecycle(deprecated=D, sunset=S, schedule=schedule)
    # That day's window would start a second before starts: there is none.
    assert life.phase(first + at, "x") is DE
    assert life.phase(first + at + 300, "x") is DE
    assert life.phase(first + DAY + at, "x") is B
    day = int(first // DAY)
    assert schedule.starts_on(day) is None
    assert schedule.starts_on(day + 1) == first + DAY + at
    assert life.windows_between(first - 3 * DAY, first + DAY + at + 1) == [
        Window(first + DAY + at, first + DAY + at + 600)
    ]
    # At exactly starts, the window is there.
    exact = Schedule(days=frozenset(range(7)), at=at, duration=600, starts=first + at)
    assert exact.starts_on(day) == first + at


def test_windows_rise_from_duration_to_final_duration() -> None:
    starts = ts(2027, 1, 1)
    sunset = starts + 100 * DAY
    schedule = Schedule(
        days=frozenset(range(7)), at=12 * HOUR, duration=600, final_duration=3600, starts=starts
    )
    life = Lifecycle(deprecated=D, sunset=sunset, schedule=schedule)
    windows = life.windows_between(starts, sunset)
    assert len(windows) == 100
    # The first one lasts about duration, the middle one (day 49, half-way plus half a day
    # after starts) its interpolated length, the last one about final_duration.
    assert windows[0].start == starts + 12 * HOUR
    assert windows[0].end - windows[0].start == pytest.approx(600 + 3000 * 0.005)
    middle = windows[49]
    assert middle.start == starts + 49 * DAY + 12 * HOUR
    assert middle.end - middle.start == pytest.approx(600 + 3000 * 0.495)
    assert windows[-1].end - windows[-1].start == pytest.approx(600 + 3000 * 0.995)
    lengths = [w.end - w.start for w in windows]
    assert lengths == sorted(lengths)
    # phase() honours the interpolated length.
    assert life.phase(middle.start + 2085 - 0.01, "x") is B
    assert life.phase(middle.start + 2085 + 0.01, "x") is DE


@pytest.mark.parametrize(
    ("final", "sunset", "starts", "start", "length"),
    [
        (None, S, D, D + DAY, 600.0),  # no final_duration: constant
        (3600.0, None, D, D + DAY, 600.0),  # no sunset: constant
        (3600.0, S, S + DAY, S + 2 * DAY, 600.0),  # a sunset before starts: constant
        (3600.0, S, S, S, 600.0),  # sunset == starts: constant
        (3600.0, D + 10 * DAY, D, D, 600.0),
        (3600.0, D + 10 * DAY, D, D + 5 * DAY, 2100.0),
        (3600.0, D + 10 * DAY, D, D + 10 * DAY, 3600.0),
        (3600.0, D + 10 * DAY, D, D + 20 * DAY, 3600.0),  # clamped after the sunset
        (3600.0, D + 10 * DAY, D, D - 5 * DAY, 600.0),  # clamped before starts
        (600.0, D + 10 * DAY, D, D + 5 * DAY, 600.0),
    ],
)
def test_schedule_length(
    final: float | None, sunset: float | None, starts: float, start: float, length: float
) -> None:
    schedule = Schedule(
        days=frozenset({0}), at=0, duration=600, final_duration=final, starts=starts
    )
    assert schedule.length(start, sunset) == pytest.approx(length)


@pytest.mark.parametrize(
    ("final", "sunset"), [(None, S), (3600.0, None)], ids=["no-final", "no-sunset"]
)
def test_constant_windows(final: float | None, sunset: float | None) -> None:
    schedule = Schedule(
        days=frozenset({0, 3}), at=HOUR, duration=900, final_duration=final, starts=D
    )
    life = Lifecycle(deprecated=D, sunset=sunset, schedule=schedule)
    windows = life.windows_between(D, S)
    assert len(windows) > 20
    assert {w.end - w.start for w in windows} == {900.0}


def test_a_window_crossing_midnight_is_found_the_next_day() -> None:
    night = datetime(2027, 2, 9, tzinfo=UTC)  # the window's day
    at = 23 * HOUR + 50 * 60
    schedule = Schedule(days=frozenset({night.weekday()}), at=at, duration=1200, starts=D)
    life = Lifecycle(deprecated=D, sunset=S, schedule=schedule)
    next_day = (night + timedelta(days=1)).timestamp()
    assert (night + timedelta(days=1)).weekday() not in schedule.days
    assert life.phase(night.timestamp() + at, "x") is B
    assert life.phase(next_day, "x") is B
    assert life.phase(next_day + 5 * 60, "x") is B  # 00:05: yesterday's window
    assert life.phase(next_day + 10 * 60 - 0.001, "x") is B
    assert life.phase(next_day + 10 * 60, "x") is DE
    assert life.windows_between(next_day, next_day + HOUR) == [
        Window(night.timestamp() + at, next_day + 600)
    ]


def test_a_schedule_stops_at_the_sunset() -> None:
    schedule = Schedule(days=frozenset(range(7)), at=0, duration=2 * HOUR, starts=D)
    life = Lifecycle(deprecated=D, sunset=S + HOUR, extensions={"beta": EXT}, schedule=schedule)
    assert life.phase(S + 30 * 60, "acme") is B
    assert life.phase(S + HOUR, "acme") is R  # inside the window, but at the sunset
    assert life.phase(S + HOUR, "beta") is B
    assert life.windows_between(S - HOUR, S + 3 * DAY, "acme") == [Window(S, S + HOUR)]


# --- windows_between ----------------------------------------------------------------------


def test_windows_between_lists_overlapping_windows_in_order_cut_at_the_sunset() -> None:
    monday = datetime(2027, 3, 1, tzinfo=UTC)
    assert monday.weekday() == 0
    m = monday.timestamp()
    schedule = Schedule(days=frozenset({0}), at=2 * HOUR, duration=HOUR, starts=D)
    life = Lifecycle(
        deprecated=D,
        sunset=S,
        extensions={"beta": EXT},
        schedule=schedule,
        windows=(
            Window(m + 5 * HOUR, m + 6 * HOUR),
            Window(m + 2 * HOUR, m + 3 * HOUR),  # the scheduled one again: listed once
            Window(m + 2.5 * HOUR, m + 4 * HOUR),  # overlaps it: both listed
            Window(m - HOUR, m),  # ends where the interval starts: not listed
            Window(S - 600, S + 600),
        ),
    )
    assert life.windows_between(m, m + 5 * HOUR) == [
        Window(m + 2 * HOUR, m + 3 * HOUR),
        Window(m + 2.5 * HOUR, m + 4 * HOUR),
    ]
    # A window starting at the interval's end is not in it; one ending inside it is.
    assert life.windows_between(m + 3.5 * HOUR, m + 5 * HOUR) == [
        Window(m + 2.5 * HOUR, m + 4 * HOUR)
    ]
    # Cut at the client's sunset.
    assert life.windows_between(S - DAY, S + DAY) == [Window(S - 600, S)]
    assert life.windows_between(S - DAY, S + DAY, "beta") == [Window(S - 600, S + 600)]
    mondays = life.windows_between(S + 600, S + 15 * DAY, "beta")
    assert [utc(w.start).weekday() for w in mondays] == [0, 0]
    assert all(w.end - w.start == HOUR for w in mondays)
    assert life.windows_between(S - DAY, S - DAY) == []


def test_windows_between_after_the_sunset_lists_nothing() -> None:
    life = Lifecycle(deprecated=D, sunset=S, windows=(Window(S - 600, S + 600),))
    assert life.windows_between(S + 60, S + 120) == []


def test_in_window_is_false_at_the_sunset() -> None:
    life = Lifecycle(deprecated=D, sunset=S, windows=(Window(S - 600, S + 600),))
    assert not life.in_window(S, S)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sunset": D - 1}, "sunset must come after deprecated"),
        ({"sunset": D}, "sunset must come after deprecated"),
        ({"sunset": S, "extensions": {"beta": S}}, "extension of 'beta'"),
        ({"sunset": S, "extensions": {"beta": S - 1}}, "extension of 'beta'"),
        ({"extensions": {"beta": EXT}}, "extension of 'beta' must come after the sunset"),
        ({"windows": (Window(W0, W0),)}, "a window must last from 1 s to a day"),
        ({"windows": (Window(W0, W0 - 1),)}, "a window must last"),
        ({"windows": (Window(W0, W0 + DAY + 0.001),)}, "a window must last"),
    ],
)
def test_lifecycle_refusals(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Lifecycle(deprecated=D, **kwargs)


def test_a_window_of_exactly_a_day_is_accepted() -> None:
    life = Lifecycle(deprecated=D, windows=(Window(W0, W0 + DAY),))
    assert life.phase(W0 + DAY - 0.001) is B
    assert life.phase(W0 + DAY) is DE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": frozenset()}, "days must be weekdays 0 to 6, got []"),
        ({"days": frozenset({7})}, "days must be weekdays 0 to 6, got [7]"),
        ({"days": frozenset({-1, 2})}, "days must be weekdays"),
        ({"at": -1.0}, "at must be seconds from 0 to 86399, got -1"),
        ({"at": DAY}, "at must be seconds from 0 to 86399, got 86400"),
        ({"duration": 0.0}, "duration must be seconds from 1 to 86400, got 0"),
        ({"duration": -5.0}, "duration must be"),
        ({"duration": DAY + 1}, "duration must be"),
        ({"final_duration": 599.0}, "final_duration must be from duration (600) to 86400"),
        ({"final_duration": DAY + 1}, "final_duration must be"),
    ],
)
def test_schedule_refusals(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"days": frozenset({1}), "at": 0.0, "duration": 600.0, "starts": D}
    with pytest.raises(ValueError, match=re.escape(message)):
        Schedule(**{**arguments, **kwargs})


def test_schedule_bounds_are_accepted() -> None:
    Schedule(days=frozenset(range(7)), at=DAY - 1, duration=DAY, final_duration=DAY, starts=D)
    Schedule(days=frozenset({0}), at=0, duration=600, final_duration=600, starts=D)


# --- the reference model -------------------------------------------------------------------


def reference_windows(life: Lifecycle, client: str | None, lo: float, hi: float) -> list[Window]:
    """Every window overlapping ``[lo, hi)``, cut at the client's sunset, found by walking
    the calendar one day at a time with ``datetime``'s weekdays."""
    sunset = life.extensions.get(client, life.sunset) if client is not None else life.sunset
    found = list(life.windows)
    schedule = life.schedule
    if schedule is not None:
        day = datetime.fromtimestamp(math.floor(lo / DAY) * DAY, UTC) - timedelta(days=2)
        while day.timestamp() < hi:
            begin = day.timestamp() + schedule.at
            if day.weekday() in schedule.days and begin >= schedule.starts:
                length = schedule.duration
                final = schedule.final_duration
                if final is not None and sunset is not None and sunset > schedule.starts:
                    share = (begin - schedule.starts) / (sunset - schedule.starts)
                    length = schedule.duration + (final - schedule.duration) * min(
                        max(share, 0.0), 1.0
                    )
                found.append(Window(begin, begin + length))
            day += timedelta(days=1)
    if sunset is not None:
        found = [Window(w.start, min(w.end, sunset)) for w in found if w.start < sunset]
    return sorted({w for w in found if w.start < hi and w.end > lo})


def reference_phase(life: Lifecycle, now: float, client: str | None, critical: bool) -> Phase:
    if life.clients is not None and client not in life.clients:
        return Phase.ACTIVE
    sunset = life.extensions.get(client, life.sunset) if client is not None else life.sunset
    if sunset is not None and now >= sunset:
        return Phase.RETIRED
    if now < life.deprecated:
        return Phase.ANNOUNCED
    windows = reference_windows(life, client, now - 2 * DAY, now + DAY)
    if (not critical or life.brownout_critical) and any(w.start <= now < w.end for w in windows):
        return Phase.BROWNOUT
    return Phase.DEPRECATED


BASE = ts(2027, 1, 1)
SPAN = 40 * DAY


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    duration = draw(st.integers(1, int(DAY)) | st.sampled_from([1, 600, 1200, DAY]))
    final = draw(st.none() | st.integers(int(duration), int(DAY)))
    return Schedule(
        days=draw(st.frozensets(st.integers(0, 6), min_size=1)),
        at=draw(st.integers(0, int(DAY) - 1) | st.sampled_from([0, 23 * HOUR + 50 * 60])),
        duration=float(duration),
        final_duration=None if final is None else float(final),
        starts=BASE + draw(st.integers(-5 * int(DAY), 20 * int(DAY))),
    )


@st.composite
def lifecycles(draw: st.DrawFn) -> Lifecycle:
    deprecated = BASE + draw(st.integers(-10, 10)) * DAY
    sunset = draw(st.none() | st.integers(1, int(SPAN)).map(lambda s: deprecated + s))
    extensions = {}
    if sunset is not None and draw(st.booleans()):
        extensions["b"] = sunset + draw(st.integers(1, 10 * int(DAY)))
    starts = draw(st.lists(st.integers(-int(DAY), int(SPAN)), max_size=6))
    windows = [
        Window(BASE + s, BASE + s + draw(st.integers(1, int(DAY)) | st.just(DAY))) for s in starts
    ]
    return Lifecycle(
        deprecated=deprecated,
        sunset=sunset,
        clients=draw(st.none() | st.just(frozenset({"a", "b"}))),
        extensions=extensions,
        windows=tuple(windows),
        schedule=draw(st.none() | schedules()),
        brownout_critical=draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(
    life=lifecycles(),
    client=st.sampled_from([None, "a", "b", "c"]),
    critical=st.booleans(),
    data=st.data(),
)
def test_phase_agrees_with_the_reference_model(
    life: Lifecycle, client: str | None, critical: bool, data: st.DataObject
) -> None:
    # Instants anywhere, and exactly at (or just before) a window's start or end.
    everything = reference_windows(life, None, BASE - 3 * DAY, BASE + SPAN + 12 * DAY)
    edges = [t for w in everything for t in (w.start, w.end)]
    now = data.draw(
        st.integers(-3 * int(DAY), int(SPAN) + 11 * int(DAY)).map(lambda s: BASE + s)
        | (
            st.sampled_from(edges).flatmap(lambda t: st.sampled_from([t, t - 0.5]))
            if edges
            else st.nothing()
        ),
        label="now",
    )
    assert life.phase(now, client, critical=critical) is reference_phase(
        life, now, client, critical
    )
    sunset = life.sunset_for(client)
    windows = reference_windows(life, client, now - 2 * DAY, now + DAY)
    assert life.in_window(now, sunset) == any(w.start <= now < w.end for w in windows)
    assert life.windows_between(now - 2 * DAY, now + DAY, client) == windows
    # And over an interval starting at now itself (just before a window's end, often).
    span = data.draw(st.integers(0, 3 * int(DAY)), label="span")
    assert life.windows_between(now, now + span, client) == reference_windows(
        life, client, now, now + span
    )
