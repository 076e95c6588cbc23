"""``VersionSet``: date-based API versions, pinned per client (Stripe's model).

An API has versions named by their release dates (``2024-06-01``). Each client is pinned
to one, and its requests are served as that version unless a request asks for another;
the upstream learns the effective version from a forwarded header and branches on it.

Rule 1: versions are ``YYYY-MM-DD`` dates, each once, in increasing order; the latest is
        the last.
Rule 2: a request that names a version gets that version, if it is one; if it is not,
        the request is refused (400 ``version_unknown``, listing the valid ones) and
        nothing is executed. Naming a version never changes the client's pin.
Rule 3: otherwise the request gets the client's pin: the one the policy file gives it,
        else (with ``pin = "first_used"``) the one recorded when it was first seen, else
        the initial version (``initial``, default the latest); with ``pin = "latest"``,
        a client the file does not pin follows the latest.
Rule 4: with ``pin = "first_used"``, a client seen for the first time is pinned to the
        version its first request used (the one it named, or the initial one), once:
        the record is made by an atomic claim, so of two workers seeing the client's
        first two requests at once, both serve the pin that was recorded.
Rule 5: a recorded pin that is no longer a version (removed from the list) serves the
        earliest version after it, or the latest: a client never gets an older API than
        the one it was pinned to.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from typing import Literal

from surefoot.errors import VersionUnknown

__all__ = ["Resolved", "VersionSet"]

#: Characters of a requested version quoted in a refusal, at most.
_SHOWN = 40


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request's effective version.

    ``source`` is ``header`` (the request named it), ``pinned`` (the client's pin) or
    ``initial`` (an unpinned client); ``pin`` the version to record for the client
    (Rule 4), or None.
    """

    version: str
    source: Literal["header", "pinned", "initial"]
    pin: str | None = None


@dataclass(frozen=True, slots=True)
class VersionSet:
    """The versions of an API (see the module).

    Example:
        >>> versions = VersionSet(("2024-01-15", "2024-09-01"))
        >>> versions.resolve(requested=None, pinned=None).version
        '2024-09-01'

    Args:
        dates: the versions, in increasing order.
        initial: the version a new client is pinned to (default: the latest).
        pin: ``first_used`` (record a new client's first version) or ``latest`` (clients
            without a pin follow the latest).
        header: the request header naming a version (for messages).
    """

    dates: tuple[str, ...]
    initial: str | None = None
    pin: Literal["first_used", "latest"] = "first_used"
    header: str = "surefoot-version"

    def __post_init__(self) -> None:
        if not self.dates:
            raise ValueError("at least one version is needed")
        for version in self.dates:
            if len(version) != 10 or not _is_date(version):
                raise ValueError(f"versions are dates 'YYYY-MM-DD', got {version[:_SHOWN]!r}")
        if any(b <= a for a, b in pairwise(self.dates)):
            raise ValueError("versions must be in increasing order, each once")
        if self.initial is not None and self.initial not in self.dates:
            raise ValueError(f"initial must be one of the versions, got {self.initial!r}")

    @property
    def latest(self) -> str:
        return self.dates[-1]

    def resolve(self, *, requested: str | None, pinned: str | None) -> Resolved:
        """The effective version of a request (Rules 2 to 5).

        Args:
            requested: the version the request names (None: it names none).
            pinned: the client's pin, from the policy file or the store (None: none yet).

        Raises:
            VersionUnknown: ``requested`` is not a version.
        """
        if requested is not None and requested not in self.dates:
            raise VersionUnknown(
                header=self.header,
                version=requested[:_SHOWN],
                versions=", ".join(self.dates),
                valid=list(self.dates),
            )
        if pinned is not None:
            current = self.current(pinned)
            return Resolved(requested or current, "header" if requested else "pinned")
        if self.pin == "latest":
            return Resolved(requested or self.latest, "header" if requested else "initial")
        first = requested or self.initial or self.latest
        return Resolved(first, "header" if requested else "initial", first)

    def current(self, pinned: str) -> str:
        """Rule 5: the version a pin serves."""
        index = bisect.bisect_left(self.dates, pinned)
        return self.dates[min(index, len(self.dates) - 1)]


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return text[4] == "-" and text[7] == "-"
