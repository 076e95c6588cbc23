"""The probe's vocabulary: what a check sends (``Target``), sees (``Exchange``) and concludes
(``Finding``), and the one door every request goes through (``ProbeClient``).

A check is an async function ``check(client, target, run) -> Finding`` (``_checks`` lists
them). It never opens a connection of its own: ``ProbeClient.send`` enforces the probe's
safety (Rule 1), records the evidence and redacts it (Rule 2).

Rule 1: every request goes through ``ProbeClient.send``, which refuses a host the file does
        not list, a request beyond ``max_requests`` and one after ``max_duration``
        (``BudgetExhausted``); a check that meets the budget ends ``inconclusive``.
Rule 2: evidence is redacted before it is kept: the values of credential headers (those the
        file names, and ``Authorization``, ``Cookie``, ``X-API-Key``...) become ``***``, and
        bodies are cut to ``MAX_EVIDENCE`` characters. A report never holds a secret.
Rule 3: a ``Finding``'s verdict is ``pass`` (the partner did what a client may rely on),
        ``fail`` (it did not: the evidence shows it), ``inconclusive`` (the probe could not
        tell: budget, errors, no effect check) or ``skipped`` (not run: not applicable, or
        a write without an effect check nor ``--accept-side-effects``). Each carries what
        the integrator should do (``advice``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "MAX_EVIDENCE",
    "BudgetExhausted",
    "Effect",
    "Exchange",
    "Finding",
    "ProbeClient",
    "Target",
    "Verdict",
]

#: Characters of a body kept in the evidence, at most.
MAX_EVIDENCE = 2000


class Verdict(enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class BudgetExhausted(Exception):
    """The probe's request cap or deadline is reached (Rule 1)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and what came back (redacted: Rule 2).

    ``status`` is None when no answer came: ``error`` says why (a timeout, a reset, or
    ``"cut by the probe"`` when the probe's own chaos proxy dropped the answer after the
    request was forwarded).
    """

    method: str
    url: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: str
    status: int | None
    response_headers: tuple[tuple[str, str], ...]
    response_body: str
    seconds: float
    error: str | None = None
    #: For an answer the probe cut on purpose (``error`` is ``"cut by the probe"``): the
    #: status the partner really answered before it was dropped; else None (a request that
    #: never reached the partner is no cut).
    cut_status: int | None = None

    def header(self, name: str) -> str | None:
        """The response's first ``name`` field (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.response_headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check concluded about one target (Rule 3)."""

    check: str
    target: str
    verdict: Verdict
    summary: str
    advice: str
    evidence: tuple[Exchange, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Effect:
    """How to count what a call created: a request, and where its answer holds the count.

    ``count`` is ``json:PATH`` (a dotted path to a list, whose length is the count, or to
    a number), ``header:NAME`` (a number), or ``status`` (2xx: 1, 404: 0).
    """

    method: str
    url: str
    count: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint of the partner's API, as the file describes it, secrets resolved.

    ``url`` and ``body`` are templates: ``{{run}}`` (this run's id), ``{{n}}`` (the
    request's number in the run) and ``{{uuid}}`` (a fresh UUID4 per rendering).
    ``key_lifetime``: seconds the partner says it keeps a key (the ``key_lifetime`` check
    re-sends after that long); None: not probed.
    """

    name: str
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    key_header: str = "Idempotency-Key"
    effect: Effect | None = None
    checks: tuple[str, ...] = ()
    concurrency: int = 5
    key_lifetime: float | None = None
    # The rate-limit checks (``_limits``): the most requests one of them sends to reach a
    # 429, and a second credential (headers that replace ``headers``'s) for ``limit_scope``.
    limit_requests: int = 50
    alt_headers: Mapping[str, str] = field(default_factory=dict)
    # ``timeouts``: a slow endpoint (a template, sent as GET) and how long to wait for it
    # (None: the file's ``timeout``).
    slow_url: str | None = None
    slow_timeout: float | None = None

    @property
    def writes(self) -> bool:
        return self.method.upper() not in ("GET", "HEAD", "OPTIONS")


class ProbeClient(Protocol):
    """The one door of every request a check sends (Rules 1 and 2)."""

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        cut: bool = False,
        read_timeout: float | None = None,
    ) -> Exchange:
        """Send one request; ``cut``: forward it, then drop the answer (a lost response);
        ``read_timeout``: seconds to wait for the answer (default: the file's ``timeout``).

        Raises:
            BudgetExhausted: no request may be sent any more.
        """
        ...

    async def wait(self, seconds: float) -> None:
        """Wait, within the deadline (``BudgetExhausted`` if it would pass it)."""
        ...

    def render(self, template: str, n: int) -> str:
        """``template`` with ``{{run}}``, ``{{n}}`` and ``{{uuid}}`` filled in."""
        ...

    def remaining(self) -> int:
        """Requests still allowed."""
        ...
