"""``VersionSet``: a request's effective version, the refusal of unknown ones, the dates.

``resolve()`` is decided over (requested, pinned, pin mode, initial) in one table; the
refusal is read as a client reads it (status, code, the valid versions); a Hypothesis
property checks Rule 5 against a scan of the sorted dates.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surefoot.contracts import Resolved, VersionSet
from surefoot.errors import ClientError, VersionUnknown

V1, V2, V3 = "2024-01-15", "2024-06-01", "2024-09-01"
DATES = (V1, V2, V3)


@pytest.mark.parametrize(
    ("requested", "pinned", "pin", "initial", "resolved"),
    [
        # Rule 3: a new client gets the initial version (default: the latest), recorded.
        (None, None, "first_used", None, Resolved(V3, "initial", V3)),
        (None, None, "first_used", V1, Resolved(V1, "initial", V1)),
        # Rule 4: a new client naming a version is pinned to the one it named.
        (V2, None, "first_used", V1, Resolved(V2, "header", V2)),
        (V1, None, "first_used", None, Resolved(V1, "header", V1)),
        # Rule 3: a pinned client gets its pin; nothing to record.
        (None, V2, "first_used", None, Resolved(V2, "pinned")),
        (None, V1, "first_used", V3, Resolved(V1, "pinned")),
        (None, V3, "latest", None, Resolved(V3, "pinned")),
        (None, V1, "latest", None, Resolved(V1, "pinned")),
        # Rule 2: naming a version never changes the pin.
        (V1, V2, "first_used", None, Resolved(V1, "header")),
        (V3, V1, "first_used", None, Resolved(V3, "header")),
        (V3, V1, "latest", None, Resolved(V3, "header")),
        # Rule 5: a removed pin serves the next later version, or the latest.
        (None, "2024-03-01", "first_used", None, Resolved(V2, "pinned")),
        (None, "2024-01-16", "first_used", None, Resolved(V2, "pinned")),
        (None, "2024-06-02", "first_used", None, Resolved(V3, "pinned")),
        (None, "2025-01-01", "first_used", None, Resolved(V3, "pinned")),
        (None, "2023-01-01", "first_used", None, Resolved(V1, "pinned")),
        (None, "2024-03-01", "latest", None, Resolved(V2, "pinned")),
        (V1, "2024-03-01", "first_used", None, Resolved(V1, "header")),
        # pin = "latest": unpinned clients follow the latest, nothing is recorded.
        (None, None, "latest", None, Resolved(V3, "initial")),
        (None, None, "latest", V1, Resolved(V3, "initial")),
        (V1, None, "latest", None, Resolved(V1, "header")),
    ],
)
def test_resolve(
    requested: str | None, pinned: str | None, pin: Any, initial: str | None, resolved: Resolved
) -> None:
    versions = VersionSet(DATES, initial=initial, pin=pin)
    assert versions.resolve(requested=requested, pinned=pinned) == resolved


def test_latest() -> None:
    assert VersionSet(DATES).latest == V3
    assert VersionSet((V1,)).latest == V1
    assert VersionSet((V1,)).resolve(requested=None, pinned="2030-01-01") == Resolved(V1, "pinned")


@pytest.mark.parametrize(
    "requested",
    [
        "2024-02-30",
        "2024-03-01",  # a date, not a version
        "",
        "latest",
        " 2024-06-01",
        "2024-06-01,2024-06-01",  # the header sent twice
        "2024-06-01" + "x" * 100,
        "\u00e9" * 60,
    ],
)
@pytest.mark.parametrize("pinned", [None, V1])
@pytest.mark.parametrize("pin", ["first_used", "latest"])
def test_an_unknown_version_is_refused(requested: str, pinned: str | None, pin: Any) -> None:
    versions = VersionSet(DATES, pin=pin, header="stripe-version")
    with pytest.raises(VersionUnknown) as info:
        versions.resolve(requested=requested, pinned=pinned)
    error = info.value
    assert isinstance(error, ClientError)
    assert error.status == 400
    assert error.code == "version_unknown"
    assert error.extensions["valid"] == [V1, V2, V3]
    assert error.extensions["header"] == "stripe-version"
    assert error.extensions["version"] == requested[:40]
    assert "versions" not in error.extensions  # the list is in the detail and in valid
    message = str(error)
    assert f"stripe-version: {requested[:40]!r} is not a version" in message
    assert f"{V1}, {V2}, {V3}" in message
    if len(requested) > 40:
        assert requested[:41] not in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dates": ()}, "at least one version is needed"),
        ({"dates": ("2024-1-15",)}, "versions are dates 'YYYY-MM-DD', got '2024-1-15'"),
        ({"dates": ("2024/01/15",)}, "versions are dates"),
        ({"dates": ("2024-02-30",)}, "versions are dates"),
        ({"dates": ("2024-W01-1",)}, "versions are dates"),  # an ISO week date, 10 characters
        ({"dates": ("20240115  ",)}, "versions are dates"),  # date.fromisoformat reads it
        ({"dates": ("2024-01-15 ",)}, "versions are dates"),
        ({"dates": ("x" * 100,)}, "got '" + "x" * 40 + "'"),
        ({"dates": (V2, V1)}, "versions must be in increasing order, each once"),
        ({"dates": (V1, V2, V2)}, "increasing order, each once"),
        ({"dates": DATES, "initial": "2024-03-01"}, "initial must be one of the versions"),
        ({"dates": DATES, "initial": ""}, "initial must be one of the versions, got ''"),
    ],
)
def test_refusals(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        VersionSet(**kwargs)


def test_the_refusal_quotes_a_long_version_cut_short() -> None:
    with pytest.raises(ValueError, match="versions are dates") as info:
        VersionSet(("y" * 1000,))
    assert "y" * 41 not in str(info.value)


# --- properties -----------------------------------------------------------------------------

version_lists = st.lists(st.dates(), min_size=1, max_size=12, unique=True).map(
    lambda days: tuple(d.isoformat() for d in sorted(days))
)


@given(dates=version_lists, pin=st.dates())
def test_a_pin_serves_the_first_version_not_older_than_it(
    dates: tuple[str, ...], pin: date
) -> None:
    versions = VersionSet(dates)
    later = [d for d in dates if d >= pin.isoformat()]
    expected = later[0] if later else dates[-1]
    assert versions.current(pin.isoformat()) == expected
    assert versions.resolve(requested=None, pinned=pin.isoformat()) == Resolved(expected, "pinned")


@given(dates=version_lists, data=st.data())
def test_a_named_version_is_served_as_named(dates: tuple[str, ...], data: st.DataObject) -> None:
    versions = VersionSet(dates, pin=data.draw(st.sampled_from(["first_used", "latest"])))
    requested = data.draw(st.sampled_from(dates))
    pinned = data.draw(st.none() | st.dates().map(date.isoformat))
    resolved = versions.resolve(requested=requested, pinned=pinned)
    assert resolved.version == requested
    assert resolved.source == "header"
    # A pin is recorded only for an unpinned client of a first_used set: the one it named.
    recorded = requested if pinned is None and versions.pin == "first_used" else None
    assert resolved.pin == recorded
