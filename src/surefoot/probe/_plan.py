"""The probe's plan: a ``probe.toml`` file made into what a run sends, with its safety rules.

``plan_from_dict(data, env=...)`` validates a parsed file with ``_schema.Root`` and applies
the rules below; ``load_plan(path)`` reads the file first (``surefoot._config.read_toml``).
``describe(plan)`` is what ``surefoot probe --dry-run`` prints. No I/O here but the file
read, no clock: the environment is a parameter.

Rule 1: every URL of the file (targets, effects, slow URLs) names a ``host:port`` listed in
        ``[probe] hosts`` (the scheme's port when none is written); any other is refused.
Rule 2: a target that writes (not GET, HEAD, OPTIONS) and has checks needs an effect check,
        or ``accept_side_effects`` (the file's, or the caller's: ``--accept-side-effects``).
Rule 3: ``${NAME}`` in a URL, a header value or a body is taken from the environment; a
        missing variable is a problem naming the field and the variable, never a value.
        Every value taken from the environment is a secret wherever it was written (URL,
        query, body, headers), and so is a header value holding one and the last word of
        every credential header's value (the bare token of ``Bearer TOKEN``): the plan
        keeps them in ``secrets`` so evidence and ``describe`` show them as ``***``.
Rule 4: a value (URL, body, header) that looks live (``sk_live_``, ``rk_live_``, or one
        of ``live_key_patterns``) is refused unless ``allow_live_keys = true``; the
        message names the field and the pattern, never the value. A URL with a user and
        password (``user:pass@``) is refused (put the credential in a header).
Rule 6: a header value with a control character or a non-ASCII character (a newline
        kept from a secret file...) is a problem naming the field, never the value.
Rule 7: ``key_lifetime`` is below ``max_duration`` (its re-send must fit in the run), and
        every check ``required`` names is one some target runs.
Rule 5: every problem of a file is reported at once as ``file:line: field: message``
        (``surefoot._config.Problems``); nothing is half-planned.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from surefoot._config import Loc, Problems, read_toml, require_pydantic
from surefoot.probe._model import Effect, Target

__all__ = [
    "CREDENTIAL_HEADERS",
    "LIVE_KEY_PATTERNS",
    "Plan",
    "describe",
    "host_port",
    "load_plan",
    "plan_from_dict",
    "redacted",
]

#: Headers whose values are credentials wherever they appear (lower case).
CREDENTIAL_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-access-token",
    }
)
#: What a live credential looks like (Stripe's secret and restricted keys), by default.
LIVE_KEY_PATTERNS: tuple[str, ...] = ("sk_live_", "rk_live_")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: A header value the probe sends: printable ASCII and tabs (Rule 6).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
#: The shortest last word of a credential header kept as a secret (shorter hides too much).
SHORTEST_SECRET = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class Plan:
    """What a probe run sends, and the bounds it keeps (``docs/probe.md``).

    Example:
        >>> plan = load_plan("probe.toml", accept_side_effects=True)
        >>> print(describe(plan))

    Args:
        targets: the endpoints, their checks and effect checks, secrets resolved.
        hosts: the ``host:port`` the probe may send to (Rule 1).
        max_requests: the cap on requests, effect checks included.
        max_duration: seconds the whole run may take.
        timeout: seconds each request waits for its answer, by default.
        accept_side_effects: writes without an effect check may run (Rule 2).
        required: the checks whose failure fails the run (None: every check run).
        credential_headers: header names (lower case) whose values are redacted.
        secrets: values redacted wherever they appear (Rule 3); ``repr`` shows no header.
        source: the file's name, for the report.
    """

    targets: tuple[Target, ...]
    hosts: tuple[str, ...]
    max_requests: int = 200
    max_duration: float = 120.0
    timeout: float = 10.0
    accept_side_effects: bool = False
    required: tuple[str, ...] | None = None
    credential_headers: frozenset[str] = CREDENTIAL_HEADERS
    secrets: tuple[str, ...] = ()
    source: str = "<dict>"

    def __repr__(self) -> str:
        # Not the dataclass's: the targets' headers hold the secrets (Rule 3).
        names = ", ".join(target.name for target in self.targets)
        return (
            f"Plan(source={self.source!r}, targets=[{names}], hosts={list(self.hosts)!r}, "
            f"max_requests={self.max_requests}, max_duration={self.max_duration:g})"
        )

    @property
    def checks(self) -> int:
        """How many checks the plan runs, over every target."""
        return sum(len(target.checks) for target in self.targets)

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` of the first target (an integration's ``base_url``)."""
        parts = urlsplit(self.targets[0].url) if self.targets else None
        return f"{parts.scheme}://{parts.netloc}" if parts else ""


def host_port(url: str) -> str | None:
    """``host:port`` of an absolute URL (the scheme's port when none is written), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None or parts.scheme not in _DEFAULT_PORTS:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port if port is not None else _DEFAULT_PORTS[parts.scheme]}"


def load_plan(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    accept_side_effects: bool = False,
) -> Plan:
    """The plan of the probe file at ``path``.

    Args:
        env: where ``${NAME}`` is looked up; default ``os.environ``.
        accept_side_effects: let writes without an effect check run (Rule 2).

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, or breaks a rule; every
            problem is listed as ``file:line: targets[N].field: expected ..., got ...``.
    """
    data, source, lines = read_toml(path)
    return plan_from_dict(
        data,
        source,
        lines=lines,
        env=os.environ if env is None else env,
        accept_side_effects=accept_side_effects,
    )


def plan_from_dict(
    data: Mapping[str, Any],
    source: str = "<dict>",
    *,
    lines: Sequence[str] | None = None,
    env: Mapping[str, str],
    accept_side_effects: bool = False,
) -> Plan:
    """The plan of a parsed probe file; same rules as ``load_plan``."""
    require_pydantic("probe files")
    from surefoot.probe._schema import Root

    problems = Problems(source, lines, "the probe file")
    root = problems.validated(Root, data)
    probe = root.probe
    accept = accept_side_effects or probe.accept_side_effects
    hosts = {host.lower() for host in probe.hosts}
    patterns = [(p, re.compile(p)) for p in (*LIVE_KEY_PATTERNS, *probe.live_key_patterns)]
    credentials = CREDENTIAL_HEADERS | {name.lower() for name in probe.credential_headers}
    secrets: list[str] = []
    names: set[str] = set()
    credentials_found: set[str] = set()
    targets = []

    def live(loc: Loc, value: str) -> None:
        if probe.allow_live_keys:
            return
        for pattern, compiled in patterns:
            if compiled.search(value):
                problems.add(
                    loc,
                    f"expected a test-mode credential, got one that looks live "
                    f"(matches {pattern!r}; hidden): use a test key, or set "
                    "probe.allow_live_keys = true",
                )
                return

    def text(loc: Loc, value: str) -> str:
        expanded = _expanded(value, env, lambda message: problems.add(loc, message), secrets)
        live(loc, expanded)
        return expanded

    def url(loc: Loc, value: str) -> str:
        before = len(problems.items)
        expanded = text(loc, value)
        found = host_port(expanded)
        if len(problems.items) > before:  # a variable is missing: that problem is enough
            return expanded
        if _userinfo(expanded):
            problems.add(
                loc,
                "expected a URL without a user or password (user:pass@; hidden): send the "
                "credential in a header, from the environment",
            )
        elif found is None:
            problems.add(loc, "expected an absolute http:// or https:// URL with a host")
        elif found.lower() not in hosts:
            problems.add(
                loc,
                f"expected a host listed in probe.hosts ({', '.join(probe.hosts)}), got {found!r}",
            )
        return expanded

    def headers(loc: Loc, table: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for name, value in table.items():
            where = (*loc, name)
            out[name] = text(where, value)
            if _ENV.search(value):
                secrets.append(out[name])
                credentials_found.add(name.lower())
            if name.lower() in credentials or _ENV.search(value):
                words = out[name].split()
                if words and len(words[-1]) >= SHORTEST_SECRET:
                    secrets.append(words[-1])
            if not _HEADER_VALUE.fullmatch(out[name]):
                problems.add(
                    where,
                    "expected a header value of printable ASCII characters, got one with a "
                    "control or non-ASCII character (hidden; a newline kept from a secret "
                    "file?)",
                )
        return out

    for index, table in enumerate(root.targets):
        at: Loc = ("targets", index)
        if table.name in names:
            problems.add((*at, "name"), f"expected a unique name, got {table.name!r}")
        names.add(table.name)
        # In the file's order, so that problems are listed as the file reads.
        target_url = url((*at, "url"), table.url)
        target_headers = headers((*at, "headers"), table.headers)
        body = None if table.body is None else text((*at, "body"), table.body)
        effect = None
        if table.effect is not None:
            effect = Effect(
                method=table.effect.method,
                url=url((*at, "effect", "url"), table.effect.url),
                count=table.effect.count,
                headers=headers((*at, "effect", "headers"), table.effect.headers),
            )
        target = Target(
            name=table.name,
            method=table.method,
            url=target_url,
            headers=target_headers,
            body=body,
            key_header=table.key_header,
            effect=effect,
            checks=tuple(table.checks),
            concurrency=table.concurrency,
            key_lifetime=table.key_lifetime,
            limit_requests=table.limit_requests,
            alt_headers=headers((*at, "alt_headers"), table.alt_headers),
            slow_url=None if table.slow_url is None else url((*at, "slow_url"), table.slow_url),
            slow_timeout=table.slow_timeout,
        )
        if target.key_lifetime is not None and target.key_lifetime >= probe.max_duration:
            problems.add(
                (*at, "key_lifetime"),
                f"expected seconds below probe.max_duration ({probe.max_duration:g}): the "
                f"re-send must fit in the run, got {target.key_lifetime:g}",
            )
        if target.writes and effect is None and not accept:
            problems.add(
                (*at, "effect"),
                f"required for a {target.method} target (its checks write): add an effect "
                "check, or accept side effects (probe.accept_side_effects = true or "
                "--accept-side-effects)",
            )
        targets.append(target)
    if probe.required is not None:
        run = {check for target in targets for check in target.checks}
        missing = [check for check in probe.required if check not in run]
        if missing:
            problems.add(
                ("probe", "required"),
                f"expected checks some target runs, got {', '.join(missing)} (no target's "
                "checks list them)",
            )
    problems.raise_if_any()
    return Plan(
        targets=tuple(targets),
        hosts=tuple(probe.hosts),
        max_requests=probe.max_requests,
        max_duration=probe.max_duration,
        timeout=probe.timeout,
        accept_side_effects=accept,
        required=None if probe.required is None else tuple(probe.required),
        credential_headers=frozenset(credentials | credentials_found),
        secrets=tuple(sorted({s for s in secrets if s}, key=len, reverse=True)),
        source=source,
    )


def _expanded(value: str, env: Mapping[str, str], problem: Any, secrets: list[str]) -> str:
    """``value`` with ``${NAME}`` from ``env``, each value kept in ``secrets``; a missing
    variable is a problem (Rule 3)."""

    def one(match: re.Match[str]) -> str:
        found = env.get(match.group(1))
        if found is None:
            problem(f"the environment variable {match.group(1)!r} is not set")
            return ""
        secrets.append(found)
        if found.strip() != found:
            secrets.append(found.strip())
        return found

    return _ENV.sub(one, value)


def _userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc


def _forms(secret: str) -> set[str]:
    """``secret`` as it may appear in a text: itself, stripped, escaped (``repr``, JSON)."""
    forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    return {form for form in forms if form}


def redacted(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value as ``***`` (longest first), its stripped and
    escaped forms too (an error text quoting it with ``repr``)."""
    forms = {form for secret in secrets if secret for form in _forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def describe(plan: Plan) -> str:
    """What ``plan`` would send, for ``--dry-run``: secrets as ``***``, the bounds stated."""
    checks = plan.checks
    lines = [
        f"probe plan from {plan.source}: {len(plan.targets)} target"
        f"{'s' * (len(plan.targets) != 1)}, {checks} check{'s' * (checks != 1)}",
        f"at most {plan.max_requests} requests (effect checks included), within "
        f"{plan.max_duration:g} s; each answer awaited {plan.timeout:g} s at most",
        f"hosts allowed: {', '.join(plan.hosts)}",
        "side effects: "
        + ("accepted" if plan.accept_side_effects else "only where an effect check counts them"),
        "required to pass: "
        + (", ".join(plan.required) if plan.required is not None else "every check run"),
    ]
    for target in plan.targets:
        lines += [
            "",
            f"target {target.name}: {target.method} {_shown(plan, target.url)}",
            *(
                f"  {name}: {_header_value(plan, name, value)}"
                for name, value in target.headers.items()
            ),
        ]
        if target.body is not None:
            lines.append(f"  body: {_shown(plan, target.body)}")
        if target.writes:
            lines.append(f"  key header: {target.key_header}")
        if target.effect is not None:
            effect = target.effect
            lines.append(
                f"  effect check: {effect.method} {_shown(plan, effect.url)} "
                f"(counts {effect.count})"
            )
            lines += [
                f"    {name}: {_header_value(plan, name, value)}"
                for name, value in effect.headers.items()
            ]
        elif target.writes:
            lines.append("  effect check: none (side effects accepted, not counted)")
        lines += [
            f"  second credential: {name}: {_header_value(plan, name, value)}"
            for name, value in target.alt_headers.items()
        ]
        if target.slow_url is not None:
            lines.append(f"  slow URL: GET {_shown(plan, target.slow_url)}")
        if target.key_lifetime is not None:
            lines.append(f"  key lifetime: re-sent after {target.key_lifetime:g} s")
        lines.append(
            f"  checks: {', '.join(target.checks)} (rate-limit checks: at most "
            f"{target.limit_requests} requests each; concurrent: {target.concurrency} at once)"
        )
    return "\n".join(lines)


def _shown(plan: Plan, text: str) -> str:
    return redacted(text, plan.secrets)


def _header_value(plan: Plan, name: str, value: str) -> str:
    return "***" if name.lower() in plan.credential_headers else _shown(plan, value)
