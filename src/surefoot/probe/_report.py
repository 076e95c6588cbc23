"""The probe's report: its findings, as Markdown, JSON, a terminal table, and a client policy.

``Report`` is what ``run_probe`` returns. ``exit_status`` gates a pipeline; ``to_markdown``
and ``to_json`` are the files ``surefoot probe --markdown/--json`` writes; ``to_table`` the
table it prints; ``integration_policy`` and ``integration_toml`` the ``[integrations.NAME]``
table of ``surefoot.client`` that the findings justify (``--policy``).

Rule 1: ``exit_status`` is 1 when a required check (the file's ``required``, default every
        check run) ends ``fail``; else 3 when a required check did not pass (it ended
        ``inconclusive``, or, named in ``required``, ``skipped`` or never ran): a gate
        never passes on what the probe could not tell; else 0.
Rule 2: a report holds only redacted evidence (``_model`` Rule 2): every output is safe to
        publish as it is.
Rule 3: the policy trusts the partner only where a check proved it may:
        - a POST (any method not idempotent by RFC 9110) is retried with an automatic key
          (``auto_idempotency_key = true``) only if ``replay``, ``lost_response`` and
          ``concurrent`` all ran and passed on every target that writes (``writes``, and
          every target a key check ran on); else ``auto_idempotency_key = false`` and
          ``retry.idempotent_methods`` without POST and PATCH;
        - when one of those checks failed on any target, ``retry.max_attempts = 1``: the
          client retries every request that carries a key, whatever its method
          (``surefoot.client``'s retry flow), and PUT or DELETE on that partner are not
          safe either, so nothing is retried;
        - ``Retry-After`` is honoured (429 stays in ``retry.retry_statuses``) only if the
          ``retry_after`` check passed; else 429 is not retried at all (a throttle keeps
          the client under the limit instead);
        - a ``[throttle]`` at the limit ``rate_limit_headers`` observed (its facts
          ``limit``, requests, and ``window``, seconds), when it observed one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surefoot.client import DEFAULT_RETRY_STATUSES, IDEMPOTENT_METHODS
from surefoot.errors import ConfigurationError
from surefoot.probe._model import Exchange, Finding, Verdict

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "Report",
    "integration_policy",
    "integration_toml",
    "to_json",
    "to_markdown",
    "to_table",
]

#: An integration's name (``surefoot.client``: it names loggers).
_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: The checks that together make a keyed POST safe to retry.
RETRY_SAFE = ("replay", "lost_response", "concurrent")
#: The checks that send keyed writes: a target one of them ran on writes.
KEY_CHECKS = ("replay", "lost_response", "concurrent", "mismatch", "no_key", "key_lifetime")
_MARK = {
    Verdict.PASS: "pass",
    Verdict.FAIL: "FAIL",
    Verdict.INCONCLUSIVE: "inconclusive",
    Verdict.SKIPPED: "skipped",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """What a probe run found.

    Args:
        findings: one per check run (or skipped), in the order they ran.
        run: the run's id (``{{run}}``).
        source: the probe file's name.
        base_url: ``scheme://host:port`` of the first target.
        targets: the targets' names, in order.
        required: the checks whose failure fails the run (None: every check run).
        requests_sent: requests sent, effect checks included.
        max_requests: the plan's cap.
        duration: seconds the run took.
        key_header: the idempotency header of the first target that writes.
        writes: the targets that write (not GET, HEAD, OPTIONS).
    """

    findings: tuple[Finding, ...]
    run: str = ""
    source: str = "<dict>"
    base_url: str = ""
    targets: tuple[str, ...] = ()
    required: tuple[str, ...] | None = None
    requests_sent: int = 0
    max_requests: int = 0
    duration: float = 0.0
    key_header: str = "Idempotency-Key"
    writes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[Finding, ...]:
        """The required checks that failed (Rule 1)."""
        return tuple(
            f
            for f in self.findings
            if f.verdict is Verdict.FAIL and (self.required is None or f.check in self.required)
        )

    @property
    def unproven(self) -> tuple[Finding, ...]:
        """The required checks that neither passed nor failed (Rule 1): ``inconclusive``,
        or, named in ``required``, ``skipped``."""
        if self.required is None:
            return tuple(f for f in self.findings if f.verdict is Verdict.INCONCLUSIVE)
        return tuple(
            f
            for f in self.findings
            if f.check in self.required and f.verdict in (Verdict.INCONCLUSIVE, Verdict.SKIPPED)
        )

    @property
    def missing(self) -> tuple[str, ...]:
        """The checks ``required`` names that no finding holds (Rule 1)."""
        ran = {f.check for f in self.findings}
        return tuple(c for c in self.required or () if c not in ran)

    @property
    def exit_status(self) -> int:
        """1 when a required check failed, 3 when none failed but one did not pass, else
        0 (Rule 1)."""
        if self.failed:
            return 1
        return 3 if self.unproven or self.missing else 0

    def verdict_line(self) -> str:
        """One line saying which required checks failed or did not pass ("" if none)."""
        if self.failed:
            return "required checks failed: " + ", ".join(
                f"{f.target}: {f.check}" for f in self.failed
            )
        names = [f"{f.target}: {f.check} ({f.verdict.value})" for f in self.unproven]
        names += [f"{check} (not run)" for check in self.missing]
        if names:
            return "required checks did not pass (none failed): " + ", ".join(names)
        return ""

    def counts(self) -> dict[str, int]:
        """Findings by verdict (``{"pass": 3, "fail": 1, ...}``), every verdict listed."""
        out = {verdict.value: 0 for verdict in Verdict}
        for finding in self.findings:
            out[finding.verdict.value] += 1
        return out

    def finding(self, check: str, target: str | None = None) -> Finding | None:
        """The first finding of ``check`` (on ``target``, if given), or None."""
        for f in self.findings:
            if f.check == check and (target is None or f.target == target):
                return f
        return None


# -- Markdown and JSON ---------------------------------------------------------------------


def _exchange_json(exchange: Exchange) -> dict[str, Any]:
    return {
        "method": exchange.method,
        "url": exchange.url,
        "request_headers": [list(pair) for pair in exchange.request_headers],
        "request_body": exchange.request_body,
        "status": exchange.status,
        "response_headers": [list(pair) for pair in exchange.response_headers],
        "response_body": exchange.response_body,
        "seconds": round(exchange.seconds, 6),
        "error": exchange.error,
        "cut_status": exchange.cut_status,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def to_json(report: Report) -> str:
    """The report as JSON (every finding with its evidence and facts)."""
    document = {
        "run": report.run,
        "source": report.source,
        "base_url": report.base_url,
        "targets": list(report.targets),
        "required": None if report.required is None else list(report.required),
        "requests_sent": report.requests_sent,
        "max_requests": report.max_requests,
        "duration": round(report.duration, 3),
        "counts": report.counts(),
        "exit_status": report.exit_status,
        "findings": [
            {
                "check": f.check,
                "target": f.target,
                "verdict": f.verdict.value,
                "summary": f.summary,
                "advice": f.advice,
                "facts": _jsonable(f.facts),
                "evidence": [_exchange_json(e) for e in f.evidence],
            }
            for f in report.findings
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    """``value`` as Markdown inline code that its own backticks cannot end."""
    text = " ".join(str(_jsonable(value)).splitlines())
    if "`" not in text:
        return f"`{text}`"
    longest = max(len(run) for run in re.findall("`+", text))
    ticks = "`" * (longest + 1)
    return f"{ticks} {text} {ticks}"


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return ticks


def _exchange_markdown(exchange: Exchange) -> list[str]:
    request = [f"{exchange.method} {exchange.url}"]
    request += [f"{name}: {value}" for name, value in exchange.request_headers]
    if exchange.request_body:
        request += ["", exchange.request_body]
    if exchange.status is None:
        answer = [f"no answer: {exchange.error}"]
    else:
        answer = [f"{exchange.status} ({exchange.seconds:.3f} s)"]
        answer += [f"{name}: {value}" for name, value in exchange.response_headers]
        if exchange.response_body:
            answer += ["", exchange.response_body]
    text = "\n".join([*request, "", "->", "", *answer])
    fence = _fence(text)
    return [f"{fence}http", text, fence, ""]


def to_markdown(report: Report, *, evidence: bool = True) -> str:
    """The report as Markdown: a summary, a table of findings, then each finding's
    advice and evidence (``evidence=False``: without the exchanges)."""
    counts = report.counts()
    verdict = {0: "passed", 1: "FAILED"}.get(report.exit_status, "NOT PROVEN")
    lines = [
        f"# Probe report: {', '.join(report.targets) or 'no target'}",
        "",
        f"Run `{report.run}` of `{report.source}` against {report.base_url or 'no host'}.",
        f"{report.requests_sent} requests sent (cap {report.max_requests}) "
        f"in {report.duration:.1f} s.",
        f"Result: {verdict} ({', '.join(f'{n} {v}' for v, n in counts.items())}).",
        "",
        "| target | check | verdict | summary |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_cell(f.target)} | {_cell(f.check)} | {_MARK[f.verdict]} | {_cell(f.summary)} |"
        for f in report.findings
    ]
    for f in report.findings:
        lines += ["", f"## {f.target}: {f.check} ({_MARK[f.verdict]})", "", f.summary, ""]
        lines += [f"What to do: {f.advice}", ""]
        if f.facts:
            lines += [f"- {_cell(str(key))}: {_code(value)}" for key, value in f.facts.items()]
            lines.append("")
        if evidence and f.evidence:
            lines += ["Evidence:", ""]
            for exchange in f.evidence:
                lines += _exchange_markdown(exchange)
    return "\n".join(lines).rstrip("\n") + "\n"


def to_table(report: Report) -> Table:
    """The findings as a ``rich`` table, for the terminal: every text is ``rich.text.Text``,
    so a partner's text (``[/bold]`` in a header it sent) is never read as markup."""
    from rich.table import Table
    from rich.text import Text

    styles = {
        Verdict.PASS: "green",
        Verdict.FAIL: "bold red",
        Verdict.INCONCLUSIVE: "yellow",
        Verdict.SKIPPED: "dim",
    }
    table = Table("target", "check", "verdict", "summary", "what to do", title="surefoot probe")
    for f in report.findings:
        cells: list[Text] = [Text(f.target), Text(f.check)]
        cells.append(Text(_MARK[f.verdict], style=styles[f.verdict]))
        table.add_row(*cells, Text(f.summary), Text(f.advice))
    return table


# -- the client policy (Rule 3) ------------------------------------------------------------


def _verdicts(report: Report, check: str) -> list[Verdict]:
    return [f.verdict for f in report.findings if f.check == check]


def _writes(report: Report) -> set[str]:
    """The targets that write: the report's, and every target a key check ran on."""
    return {*report.writes, *(f.target for f in report.findings if f.check in KEY_CHECKS)}


def _retry_safe(report: Report) -> bool:
    """Every check of ``RETRY_SAFE`` ran and passed on every target that writes."""
    writes = _writes(report)
    if not writes:
        return False
    passed = {(f.target, f.check) for f in report.findings if f.verdict is Verdict.PASS}
    failed = {(f.target, f.check) for f in report.findings if f.verdict is not Verdict.PASS}
    return all(
        (target, check) in passed and (target, check) not in failed
        for target in writes
        for check in RETRY_SAFE
    )


def _unsafe(report: Report) -> bool:
    """A check of ``RETRY_SAFE`` failed on some target: a retried write may execute twice."""
    return any(f.check in RETRY_SAFE and f.verdict is Verdict.FAIL for f in report.findings)


def _positive(value: object, *, whole: bool) -> bool:
    kind = int if whole else (int, float)
    return (
        isinstance(value, kind)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _observed_limit(report: Report) -> tuple[int, float] | None:
    """The limit ``rate_limit_headers`` saw: its ``limit`` and ``window`` facts, else the
    first ``RateLimit-Policy`` member with a quota ``q`` and a window ``w``."""
    for f in report.findings:
        if f.check != "rate_limit_headers":
            continue
        pairs = [(f.facts.get("limit"), f.facts.get("window"))]
        policy = f.facts.get("policy")
        if isinstance(policy, Mapping):
            pairs += [
                (member.get("q"), member.get("w"))
                for member in policy.values()
                if isinstance(member, Mapping)
            ]
        for limit, window in pairs:
            if _positive(limit, whole=True) and _positive(window, whole=False):
                return limit, float(window)  # type: ignore[return-value,arg-type]
    return None


def integration_policy(report: Report, name: str, *, base_url: str | None = None) -> dict[str, Any]:
    """The ``[integrations.NAME]`` table the findings justify (Rule 3), as a dict.

    Example:
        >>> table = integration_policy(report, "payments")
        >>> integrations_from_dict({"integrations": {"payments": table}})

    Args:
        report: a probe's report.
        name: the integration's name (only for the caller's file: not in the table).
        base_url: the partner's base URL; default the report's.
    """
    del name  # the table's key, written by integration_toml
    table: dict[str, Any] = {"base_url": base_url or report.base_url}
    retry: dict[str, Any] = {}
    if _retry_safe(report):
        table["auto_idempotency_key"] = True
        if report.key_header.lower() != "idempotency-key":
            table["idempotency_header"] = report.key_header
    else:
        table["auto_idempotency_key"] = False
        retry["idempotent_methods"] = sorted(IDEMPOTENT_METHODS - {"POST", "PATCH"})
    if _unsafe(report):
        # The client retries any request that carries a key, whatever its method, and has
        # no setting that stops that for one method: only one attempt stops it (Rule 3).
        retry["max_attempts"] = 1
    honest = _verdicts(report, "retry_after")
    if not honest or any(v is not Verdict.PASS for v in honest):
        retry["retry_statuses"] = sorted(DEFAULT_RETRY_STATUSES - {429})
    if retry:
        table["retry"] = retry
    observed = _observed_limit(report)
    if observed is not None:
        limit, window = observed
        table["throttle"] = {"limit": f"{limit}/{max(1, round(window))} seconds"}
    return table


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def integration_toml(report: Report, name: str, *, base_url: str | None = None) -> str:
    """``integration_policy`` as a TOML file for ``surefoot.client.load_integrations``,
    each choice commented with the findings behind it.

    Raises:
        ConfigurationError: ``name`` is not letters, digits, ``_`` and ``-``.
    """
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"integration_toml.name: expected letters, digits, '_' and '-', got {name!r}"
        )
    table = integration_policy(report, name, base_url=base_url)
    safe = table["auto_idempotency_key"]
    honest = "retry_statuses" not in table.get("retry", {})
    lines = [
        f"# Written by surefoot probe from run {report.run} of {report.source}.",
        "# " + _because(report, RETRY_SAFE, safe, "POST is retried with an automatic key"),
        "# " + _because(report, ("retry_after",), honest, "Retry-After is honoured"),
    ]
    writes = sorted(_writes(report))
    if writes:
        lines.append(f"# Targets that write: {', '.join(writes)}.")
    if table.get("retry", {}).get("max_attempts") == 1:
        lines += [
            "# NOT retried at all (max_attempts = 1): a key check failed, and the client",
            "# retries every request that carries an idempotency key whatever its method.",
        ]
    lines += [
        f"[integrations.{name}]",
    ]
    sections = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in sections]
    for section, values in sections.items():
        lines += ["", f"[integrations.{name}.{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _because(report: Report, checks: tuple[str, ...], yes: bool, what: str) -> str:
    seen = ", ".join(
        f"{check} {'/'.join(v.value for v in _verdicts(report, check)) or 'not run'}"
        for check in checks
    )
    return f"{what if yes else 'NOT: ' + what}: {seen}"
