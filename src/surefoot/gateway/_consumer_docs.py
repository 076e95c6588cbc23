"""``consumer_docs``: the page an API's consumers read, written from the gateway's policy file.

Theory of operation: ``consumer_guide(config, now=..., client=...)`` works out, for every
route the file names, what a client meets there (any client, or the one named), as a
neutral model (``Guide``: frozen dataclasses, no markup); ``guide_markdown`` and
``guide_html`` render that model. ``consumer_docs`` does both (``surefoot docs --config
FILE [--client NAME]``)::

    GatewayConfig ──► consumer_guide ──► Guide ──┬──► guide_markdown ──► Markdown
                                                 └──► guide_html ──► one HTML page

Per route (a template of ``[[routes]]``, of a rate-limit policy's ``routes`` and
``costs``, or of an ``[[abuse.failures]]`` rule): its idempotency key (required, optional
or none, which header, the key's rules, how long it is remembered, what a replay, a
duplicate in flight and a reused key get), each rate-limit policy covering it (its limits
for everyone and per tier, its cost there, whether it is enforced, shadowed or being rolled
out, the headers), its deprecation (dates, links, replacement, brownouts) and every problem
it can answer with, from the catalogue, with what to do next and whether sending the same
request again is safe. Then the API's versions.

Rule 1: secrets never appear: no API key (a client is at most named), the admin token,
        store URLs and the upstream's address are never read. The page every consumer
        reads names no client at all: a client's limits by agreement, its later sunset, its
        pinned version, its place in a rollout or a deprecation's list of clients are said
        of "some clients" only, never with a name or a count. ``client=NAME`` writes that
        client's own page: its own terms (its override, tier, sunset, version, rollout
        state, whether each deprecation applies to it) and still no other client's.
Rule 2: every problem listed is in the catalogue (``surefoot.errors.catalogue``) with the
        catalogue's status, code and title; what to do next is ``RECOVERY`` (one place),
        and "retry the same request" is "no" exactly when the catalogue says the problem
        is not retryable.
Rule 3: the output is a function of the file, ``now`` and ``client`` alone: routes sorted
        by path then method, no timestamp unless ``now`` is given (which also decides each
        deprecation's state: announced, deprecated, in a brownout window, retired; on a
        client's page, for that client: its sunset, and no brownout when it is critical
        unless ``brownout_critical``).
Rule 4: the HTML page is self-contained (an inline stylesheet, no script, no other
        resource) and escapes every value taken from the file with ``html.escape``; the
        Markdown escapes them too, so that its own HTML rendering is as safe.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Literal

from surefoot._routes import RouteTable
from surefoot.contracts import Lifecycle, Phase, Window, deprecation_field
from surefoot.errors import SurefootError, catalogue, problem_type_uri
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import Limit, RateLimitPolicy, parse_limit

if TYPE_CHECKING:
    from surefoot.gateway._config import GatewayConfig
    from surefoot.gateway._schema import Deprecation, Policy

__all__ = [
    "RECOVERY",
    "Guide",
    "consumer_docs",
    "consumer_guide",
    "guide_html",
    "guide_markdown",
]

#: What a client does next, per problem code the page lists (Rule 2): the catalogue's
#: detail templates, made generic.
RECOVERY: dict[str, str] = {
    "invalid_path": "Send the path in its plain form (no dot segments, encoded slashes or "
    "doubled slashes); nothing was executed.",
    "credentials_ambiguous": "Send one credential, in one header field; nothing was executed.",
    "request_timeout": "Send the whole request promptly; nothing was executed.",
    "request_body_too_large": "Send a smaller body; nothing was executed.",
    "request_headers_too_large": "Send fewer or smaller header fields; nothing was executed.",
    "idempotency_key_missing": "Send the key header with a new unique key (a UUID v4) for each "
    "operation, and the same key on every retry of it.",
    "idempotency_key_invalid": "Send one key of 1 to 255 printable ASCII characters, such as a "
    "UUID v4.",
    "idempotency_key_ambiguous": "Send the key in one place, or the same key in the header and "
    "the body field.",
    "idempotency_request_in_progress": "The first request with this key is still running: send "
    "the same request with the same key after Retry-After to receive its result.",
    "idempotency_outcome_unknown": "The first request may or may not have taken effect: send the "
    "same request with the same key after Retry-After until you receive its final result; "
    "never send the operation again with a new key meanwhile.",
    "idempotency_response_not_stored": "The request was executed but its response was too large "
    "to replay: do not retry, fetch the resulting resource instead.",
    "idempotency_key_reused": "Send the original request unchanged with this key, or use a new "
    "key for a new operation.",
    "idempotency_records_exceeded": "You hold too many live keys: retry after Retry-After, once "
    "older keys expire or are settled, and reuse a key only to retry its own operation.",
    "rate_limit_exceeded": "Wait the seconds of Retry-After, then send the request again; spread "
    "your requests out.",
    "quota_exceeded": "Your quota for the period is used: wait until it renews (Retry-After says "
    "when) or ask for a larger one.",
    "concurrency_limit_exceeded": "Wait for one of your requests in flight to finish, then send "
    "it again.",
    "abuse_limit_exceeded": "Your rate is far above its usual level: slow down and retry after "
    "Retry-After.",
    "challenge_required": "Complete the challenge at the page the problem names, then retry "
    "after Retry-After.",
    "access_denied": "Do not retry: contact the API's operator and quote the request_id.",
    "route_retired": "Move to the replacement the deprecation names; a refusal during a "
    "brownout window ends with the window, one after the sunset is final.",
    "version_unknown": "Send one of the versions listed under Versions, or no version header to "
    "use your pinned version.",
    "internal_error": "Retry with backoff; quote the request_id when you contact support.",
    "upstream_unavailable": "Retry with backoff; on a route that takes an idempotency key, retry "
    "with the same key.",
    "upstream_timeout": "Retry with backoff; on a route that takes an idempotency key, retry "
    "with the same key, elsewhere check first whether the work happened.",
    "circuit_open": "Nothing was sent: retry after Retry-After.",
    "service_overloaded": "Nothing was executed: retry the same request after Retry-After.",
    "store_unavailable": "Nothing was executed: retry the same request (with the same key) "
    "after Retry-After.",
    "store_capacity_exceeded": "Nothing was executed: retry the same request after Retry-After.",
}

_BY_CODE: dict[str, type[SurefootError]] = {cls.code: cls for cls in catalogue()}
_ANY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Methods HTTP defines as idempotent: sending one twice does no more than once.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem a route can answer with (Rule 2)."""

    status: int
    code: str
    title: str
    recovery: str
    #: "yes", "no", "with the same key" or "check first" (a retry may repeat the work).
    retry: str
    type: str


@dataclass(frozen=True, slots=True)
class KeyRules:
    """The idempotency key a route takes."""

    requirement: Literal["required", "optional", "rollout"]
    header: str
    body_field: str | None
    methods: tuple[str, ...]
    ttl: float
    scope: Literal["principal", "principal_route"]
    wait: float
    on_server_error: Literal["release", "store", "unknown"]
    on_lease_expiry: Literal["reexecute", "unknown"]
    #: A client may hold only so many live keys (``idempotency_records_exceeded``).
    quota: bool
    fail_open: bool


@dataclass(frozen=True, slots=True)
class LimitRow:
    """The limits of one policy for one kind of client."""

    who: str
    limits: tuple[str, ...]
    #: The ``RateLimit-Policy`` value a client sees (None: a quota's window changes).
    policy_field: str | None
    #: The row that applies to the client whose page this is.
    yours: bool = False


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """One rate-limit policy covering a route."""

    name: str
    enforcement: str
    counted: str
    cost: int
    rows: tuple[LimitRow, ...]
    #: Some clients have other limits by agreement (the page every consumer reads).
    agreements: bool = False


@dataclass(frozen=True, slots=True)
class Retirement:
    """A route's deprecation, as its consumers read it."""

    deprecated: float
    #: The route's sunset, or on a client's page that client's own (Rule 1).
    sunset: float | None
    link: str | None
    sunset_link: str | None
    replacement: str | None
    #: None: every client; "some" (some clients only) or "none" (no client yet).
    limited: Literal["some", "none"] | None
    #: Some clients have a later sunset (the page every consumer reads).
    later_sunsets: bool
    #: On a client's page with an extension: the route's sunset it extends.
    extended_from: float | None
    brownouts: tuple[Window, ...]
    schedule: str | None
    brownout_critical: bool
    #: On a critical client's page: brownouts spare it (``brownout_critical`` false).
    spared: bool
    state: str | None
    #: The brownout windows of the coming weeks (``now`` given; see ``_next_windows``).
    upcoming: tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class RouteDoc:
    """Everything a client meets on one route."""

    method: str
    path: str
    key: KeyRules | None
    limits: tuple[LimitPolicy, ...]
    retirement: Retirement | None
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class VersionsDoc:
    """``[versions]``, as clients use it."""

    dates: tuple[str, ...]
    header: str
    forward_header: str
    pin: Literal["first_used", "latest"]
    initial: str
    #: On a client's page: the version set for it in ``[[clients]]``.
    pinned: str | None


@dataclass(frozen=True, slots=True)
class Guide:
    """The whole page, before markup."""

    title: str
    now: float | None
    #: Whose page this is (None: the page every consumer reads).
    client: str | None
    routes: tuple[RouteDoc, ...]
    rate_headers: bool
    legacy_headers: bool
    versions: VersionsDoc | None


# -- building the model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reader:
    """The client whose page is written (Rule 1): its record and its principals."""

    name: str
    tier: str | None
    critical: bool
    version: str | None
    principals: tuple[str, ...]


def _reader(config: GatewayConfig, client: str | None) -> _Reader | None:
    if client is None:
        return None
    record = next((c for c in config.root.clients if c.name == client), None)
    if record is None:
        raise ValueError(f"client: no [[clients]] named {client!r}")
    principals = tuple(sorted(p for p, name in config.principals.items() if name == client))
    return _Reader(client, record.tier, record.critical, record.version, principals)


def consumer_guide(
    config: GatewayConfig,
    *,
    now: float | None = None,
    title: str | None = None,
    client: str | None = None,
) -> Guide:
    """The model of the consumer page of ``config`` (Rule 3: ``now`` decides states only),
    for every consumer or, with ``client``, for that ``[[clients]]`` name alone (Rule 1).

    Raises:
        ValueError: ``client`` is not a ``[[clients]]`` name.
    """
    root = config.root
    reader = _reader(config, client)
    routes = RouteTable(config.idempotency_routes.items(), strict=lambda p: p is None)
    tables = {p.name: p for p in root.rate_limit.policies}
    docs = []
    for template in _templates(config):
        method, path = _split(template)
        methods = (method,) if method != "ANY" else _ANY_METHODS
        key = _key(config.idempotency_policy, routes, methods, path)
        # route_for answers "" (falsy) for a policy without routes: it covers everything.
        covering = [
            p
            for p in config.rate_limit_policies
            if any(p.route_for(m, path) is not None for m in methods)
        ]
        limits = tuple(
            _limit_policy(p, tables.get(p.name), methods, path, reader) for p in covering
        )
        retirement = None
        deprecation = next(
            (r.deprecation for r in root.routes if r.match == template and r.deprecation), None
        )
        life = config.lifecycles.get(template)
        # A deprecation limited to other clients is none of this client's business.
        if (
            deprecation is not None
            and life is not None
            and (reader is None or life.applies_to(reader.name))
        ):
            retirement = _retirement(deprecation, life, now, reader)
        problems = _problems(config, template, method, key, covering, tables, retirement)
        docs.append(RouteDoc(method, path, key, limits, retirement, problems))
    docs.sort(key=lambda r: (r.path, r.method))
    versions = None
    if root.versions is not None:
        v = root.versions
        versions = VersionsDoc(
            dates=tuple(v.dates),
            header=v.header,
            forward_header=v.forward_header,
            pin=v.pin,
            initial=v.initial or v.dates[-1],
            pinned=reader.version if reader is not None else None,
        )
    return Guide(
        title=title or "Using this API: limits, errors and retries",
        now=now,
        client=reader.name if reader is not None else None,
        routes=tuple(docs),
        rate_headers=root.rate_limit.headers,
        legacy_headers=root.rate_limit.legacy_headers,
        versions=versions,
    )


def _templates(config: GatewayConfig) -> list[str]:
    """Every route template the file names, each once, in a canonical spelling."""
    root = config.root
    found: list[str] = [r.match for r in root.routes]
    for policy in root.rate_limit.policies:
        found += [*policy.routes, *policy.costs]
    for rule in root.abuse.failures:
        found += rule.routes
    seen: dict[str, str] = {}
    for template in found:
        method, path = _split(template)
        seen.setdefault(f"{method} {path}", template)
    return list(seen.values())


def _split(template: str) -> tuple[str, str]:
    prefix, _, path = template.strip().rpartition(" ")
    method = prefix.strip().upper()
    return (method if method and method != "*" else "ANY"), path


def _key(
    default: IdempotencyPolicy,
    routes: RouteTable[IdempotencyPolicy | None],
    methods: Sequence[str],
    path: str,
) -> KeyRules | None:
    """The key rules on ``path`` for the first of ``methods`` a policy protects."""
    for method in methods:
        matched = routes.match(method, path)
        policy = default if matched is None else matched[1]
        if policy is None or not policy.applies_to(method):
            continue
        requirement: Literal["required", "optional", "rollout"] = "optional"
        if policy.required:
            requirement = "rollout" if policy.rollout else "required"
        return KeyRules(
            requirement=requirement,
            header=policy.header,
            body_field=policy.body_field,
            methods=tuple(m for m in methods if policy.applies_to(m)),
            ttl=policy.ttl,
            scope=policy.scope,
            wait=policy.wait,
            on_server_error=policy.on_server_error,
            on_lease_expiry=policy.on_lease_expiry,
            quota=bool(policy.max_records_per_principal or policy.max_unknown_per_principal),
            fail_open=policy.on_store_error == "fail_open",
        )
    return None


def _limit_policy(
    policy: RateLimitPolicy,
    table: Policy | None,
    methods: Sequence[str],
    path: str,
    reader: _Reader | None,
) -> LimitPolicy:
    if table is None:  # [identity] address_limits: built by the config, not a table
        return LimitPolicy(
            name=policy.name,
            enforcement="enforced",
            counted="per client address, over every credential sent from it",
            cost=1,
            rows=(_row("every client address", policy.name, policy.limits_for("", None)),),
        )
    enforcement = "enforced"
    if table.shadow:
        enforcement = "not enforced yet: requests over it are counted, never refused"
    elif table.rollout is not None:
        enforcement = _rollout(policy, table, reader)
    # Rule 1: other clients' overrides are a note without names; a client sees its own.
    own = table.overrides.get(reader.name) if reader is not None else None
    mine = None
    if own is not None:
        mine = "you, by agreement"
    elif reader is not None:
        mine = f"tier {reader.tier}" if reader.tier in policy.tiers else "everyone"
    rows = [_row("everyone", policy.name, policy.limits_for("", None), mine)]
    for tier in sorted(policy.tiers):
        rows.append(_row(f"tier {tier}", policy.name, policy.limits_for("", tier), mine))
    if own is not None:
        specs = tuple(parse_limit(t, algorithm=policy.algorithm) for t in own)
        rows.append(_row("you, by agreement", policy.name, specs, mine))
    counted = "per client, for each route separately"
    if not policy.per_route:
        counted = "per client, over every route the policy covers"
    cost = max(policy.cost_for(m, path) for m in methods)
    agreements = reader is None and bool(table.overrides)
    return LimitPolicy(policy.name, enforcement, counted, cost, tuple(rows), agreements)


def _rollout(policy: RateLimitPolicy, table: Policy, reader: _Reader | None) -> str:
    """A rolled-out policy's enforcement: a share of clients, or whether it is enforced for
    the reader's principals (Rule 1: the clients it names are never listed)."""
    assert table.rollout is not None
    if reader is None:
        share = f"{table.rollout.percent:g}% of clients"
        return (
            f"being rolled out: enforced for {share}"
            + (" and for some chosen clients" if table.rollout.clients else "")
            + "; other clients' requests over it are counted, not refused yet"
        )
    enforced = [policy.enforced_for(p) for p in reader.principals]
    if enforced and all(enforced):
        return "being rolled out to a share of clients, and enforced for you already"
    if any(enforced):
        return (
            "being rolled out to a share of clients: enforced for some of your credentials "
            "already; requests over it from the others are counted, not refused yet"
        )
    return (
        "being rolled out to a share of clients, not to you yet: your requests over it "
        "are counted, not refused yet"
    )


def _row(who: str, name: str, limits: Iterable[Limit], mine: str | None = None) -> LimitRow:
    limits = tuple(limits)
    return LimitRow(who, tuple(map(_limit_text, limits)), _policy_field(name, limits), who == mine)


def _limit_text(limit: Limit) -> str:
    if limit.algorithm == "concurrency":
        return f"{limit.amount} requests in flight at once"
    if limit.period is not None:
        return f"{limit.amount} per calendar {limit.period} ({limit.timezone})"
    per = _WINDOWS.get(limit.window) or _duration(limit.window)
    text = f"{limit.amount} per {per}"
    if limit.algorithm == "leaky_queue":
        text += f" (a request over it waits up to {_duration(limit.max_wait)} first)"
    return text


_WINDOWS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


def _policy_field(name: str, limits: Sequence[Limit]) -> str | None:
    """``RateLimit-Policy``'s value for ``limits`` (as ``surefoot.ratelimit`` names them:
    the policy's name for one limit, ``NAME-60s``, ``NAME-day``... for several)."""
    members = []
    for limit in limits:
        if limit.algorithm == "quota":
            return None
        label = name
        if len(limits) > 1:
            label += "-concurrency" if limit.algorithm == "concurrency" else f"-{limit.window:g}s"
        if limit.algorithm == "concurrency":
            members.append(f'"{label}";q={limit.amount};qu="concurrent-requests"')
        else:
            members.append(f'"{label}";q={limit.capacity};w={math.ceil(limit.window)}')
    return ", ".join(members)


def _retirement(
    table: Deprecation, life: Lifecycle, now: float | None, reader: _Reader | None
) -> Retirement:
    """The deprecation as ``reader`` meets it, or (None) as a client it applies to without
    an extension does (Rule 1: no name, and no other client's date, decides the page)."""
    limited: Literal["some", "none"] | None = None
    if reader is None and life.clients is not None:
        limited = "some" if life.clients else "none"
    later_sunsets = reader is None and bool(life.extensions)
    if reader is None:
        # Every client alike: the deprecation's own dates for whoever it applies to (an
        # empty list of clients included: the page still says what they would meet).
        life = replace(life, clients=None, extensions={})
    name = reader.name if reader is not None else None
    deprecated, sunset = life.deprecated, life.sunset_for(name)
    spared = reader is not None and reader.critical and not life.brownout_critical
    schedule = None
    if table.brownout_schedule is not None and not spared:
        s = table.brownout_schedule
        days = ", ".join(d.capitalize() for d in sorted(s.days, key=_DAY_ORDER.index))
        starts = s.starts.timestamp() if s.starts is not None else deprecated
        schedule = (
            f"every {days} at {s.at} UTC from {_date(starts)}"
            + (f" until the sunset ({_date(sunset)})" if sunset is not None else "")
            + f", each window lasting {_duration(s.duration)}"
        )
        if s.final_duration is not None and s.final_duration != s.duration and sunset is not None:
            schedule += f", growing to {_duration(s.final_duration)} by the sunset"
    state = None
    upcoming: tuple[Window, ...] = ()
    if now is not None:
        phase = life.phase(now, name, critical=spared)
        if phase is Phase.RETIRED:
            state = f"retired since {_date(sunset or now)}: requests are answered 410 route_retired"
        elif phase is Phase.BROWNOUT:
            state = "in a brownout window now: requests are answered 410 route_retired"
        elif phase is Phase.DEPRECATED:
            state = "deprecated"
        else:
            state = f"announced: deprecated from {_date(deprecated)}"
        if not spared:
            upcoming = tuple(life.windows_between(now, now + UPCOMING, name))
    extended = reader is not None and sunset != life.sunset
    return Retirement(
        deprecated=deprecated,
        sunset=sunset,
        link=table.link,
        sunset_link=table.sunset_link,
        replacement=table.replacement,
        limited=limited,
        later_sunsets=later_sunsets,
        extended_from=life.sunset if extended else None,
        brownouts=() if spared else life.windows,
        schedule=schedule,
        brownout_critical=table.brownout_critical,
        spared=spared,
        state=state,
        upcoming=upcoming,
    )


_DAY_ORDER = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#: How far ahead the next brownout windows are listed.
UPCOMING = 28 * 86400.0


def _problems(
    config: GatewayConfig,
    template: str,
    method: str,
    key: KeyRules | None,
    covering: Sequence[RateLimitPolicy],
    tables: dict[str, Policy],
    retirement: Retirement | None,
) -> tuple[Problem, ...]:
    """Every problem the route can answer with (Rule 2), by status then code."""
    root = config.root
    codes = {
        "invalid_path",
        "credentials_ambiguous",
        "request_timeout",
        "request_body_too_large",
        "request_headers_too_large",
        "internal_error",
        "upstream_unavailable",
        "upstream_timeout",
    }
    if root.upstream.breaker is not None:
        codes.add("circuit_open")
    if root.upstream.concurrency is not None:
        codes.add("service_overloaded")
    if key is not None:
        codes |= {
            "idempotency_key_invalid",
            "idempotency_request_in_progress",
            "idempotency_response_not_stored",
            "idempotency_key_reused",
            "store_capacity_exceeded",
        }
        if key.requirement != "optional":
            codes.add("idempotency_key_missing")
        if key.body_field is not None:
            codes.add("idempotency_key_ambiguous")
        if "unknown" in (key.on_lease_expiry, key.on_server_error):
            codes.add("idempotency_outcome_unknown")
        if key.quota:
            codes.add("idempotency_records_exceeded")
        if not key.fail_open:
            codes.add("store_unavailable")
    for limiter in covering:
        table = tables.get(limiter.name)
        if table is not None and table.shadow:
            continue
        every = [limiter.limits_for("", tier) for tier in (None, *limiter.tiers)]
        every += [limiter.limits_for(principal, None) for principal in limiter.overrides]
        for limit in (limit for limits in every for limit in limits):
            codes.add(
                {"concurrency": "concurrency_limit_exceeded", "quota": "quota_exceeded"}.get(
                    limit.algorithm or "", "rate_limit_exceeded"
                )
            )
        if limiter.on_store_error == "fail_closed":
            codes.add("store_unavailable")
    abuse = root.abuse
    if abuse.enabled:
        codes.add("access_denied")  # a ban may be added at any time, from the admin API too
        _, path = _split(template)
        rules = [r for r in abuse.failures if _covers(r.routes, method, path)]
        challenge = abuse.challenge is not None and abuse.challenge.action == "refuse"
        if challenge and any(r.challenge_after is not None for r in rules):
            codes.add("challenge_required")
        anomaly = abuse.anomaly
        if anomaly is not None and anomaly.enabled:
            if anomaly.action == "tighten":
                codes.add("abuse_limit_exceeded")
            elif anomaly.action == "challenge" and challenge:
                codes.add("challenge_required")
    if retirement is not None:
        codes.add("route_retired")
    if root.versions is not None:
        codes.add("version_unknown")
    safe = key is not None or method in _IDEMPOTENT_METHODS
    out = []
    for code in codes:
        cls = _BY_CODE[code]
        retry = "yes" if cls.retryable else "no"
        if code in ("upstream_unavailable", "upstream_timeout", "internal_error"):
            retry = "with the same key" if key is not None else ("yes" if safe else "check first")
        elif key is not None and cls.retryable:
            retry = "with the same key"
        recovery = RECOVERY[code]
        if code == "request_body_too_large":
            recovery = f"Send a body of at most {root.server.max_request_body} bytes."
        out.append(Problem(cls.status, code, cls.title, recovery, retry, problem_type_uri(code)))
    return tuple(sorted(out, key=lambda p: (p.status, p.code)))


def _covers(templates: Sequence[str], method: str, path: str) -> bool:
    table = RouteTable((t, True) for t in templates)
    methods = (method,) if method != "ANY" else _ANY_METHODS
    return any(table.match(m, path) is not None for m in methods)


# -- words -------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = round(seconds)  # a window growing towards the sunset ends between seconds
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def _date(moment: float) -> str:
    when = datetime.fromtimestamp(moment, UTC)
    if when.hour == when.minute == when.second == 0:
        return when.strftime("%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _moment(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _window(window: Window) -> str:
    return f"{_moment(window.start)} for {_duration(window.end - window.start)}"


def _key_lines(key: KeyRules) -> list[tuple[str, str | None]]:
    """The key's rules as (sentence, code) pairs: the code, a header or value, is shown as
    code after the sentence's colon."""
    methods = ", ".join(key.methods)
    what = {
        "required": f"Required on {methods}: a request without a key is refused (400).",
        "rollout": f"Being made required on {methods}: send one now, requests without a key "
        "are accepted only while the requirement is rolled out.",
        "optional": f"Optional on {methods}: send one to make retries safe.",
    }[key.requirement]
    lines: list[tuple[str, str | None]] = [(what, None), ("Send it in the header", key.header)]
    if key.body_field is not None:
        lines.append(("Or in the top-level JSON body field", key.body_field))
    lines += [
        (
            "A key is 1 to 255 printable ASCII characters; use a new UUID v4 for each "
            "operation and the same key for every retry of it.",
            None,
        ),
        (
            "A key is remembered for "
            + _duration(key.ttl)
            + (
                ", per client across all routes: never use one key on two routes."
                if key.scope == "principal"
                else ", per client and route."
            ),
            None,
        ),
        (
            "A retry of a completed request gets the first response again, status, headers "
            "and body, with the header",
            "Idempotent-Replayed: true",
        ),
        (
            "A retry while the first request still runs "
            + (
                f"waits up to {_duration(key.wait)} for its result, then gets "
                if key.wait
                else "gets "
            )
            + "409 idempotency_request_in_progress: retry after Retry-After.",
            None,
        ),
        (
            "The same key with a different method, path or body gets 422 "
            "idempotency_key_reused: nothing is executed.",
            None,
        ),
        (
            {
                "release": "When the server fails, the key is released: a retry runs again.",
                "store": "When the server fails, the failure is kept: a retry gets it again.",
                "unknown": "When the server fails after it may have done the work, a retry "
                "gets 409 idempotency_outcome_unknown until the outcome is known, then "
                "the outcome: the work is never done twice.",
            }[key.on_server_error],
            None,
        ),
    ]
    if key.fail_open:
        lines.append(
            (
                "While the key store is down, requests run unprotected and their responses "
                "carry the header",
                "Idempotency-Status: unprotected",
            )
        )
    return lines


def _retirement_lines(r: Retirement) -> list[tuple[str, str | None]]:
    lines: list[tuple[str, str | None]] = []
    if r.state is not None:
        lines.append((f"State: {r.state}.", None))
    lines.append(
        (
            f"Deprecated from {_date(r.deprecated)}; every response says so (RFC 9745)",
            f"Deprecation: {deprecation_field(r.deprecated)}",
        )
    )
    if r.sunset is not None:
        lines.append(
            (
                f"Sunset on {_date(r.sunset)}: from then on, requests are answered 410 "
                "route_retired; every response announces it (RFC 8594)",
                f"Sunset: {formatdate(r.sunset, usegmt=True)}",
            )
        )
    else:
        lines.append(("No sunset date is decided yet.", None))
    if r.replacement is not None:
        lines.append(("Use instead", r.replacement))
    if r.extended_from is not None:
        lines.append((f"Your sunset is extended from {_date(r.extended_from)}.", None))
    if r.later_sunsets:
        lines.append(("Some clients have a later sunset by agreement.", None))
    if r.limited == "some":
        lines.append(("Applies to some clients only.", None))
    elif r.limited == "none":
        lines.append(("Applies to no client yet.", None))
    if r.spared:
        lines.append(("Your client is marked critical: brownouts spare it.", None))
    return lines


# -- Markdown ----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    """Text with every character escaped that Markdown (or HTML within it) would read as
    markup (Rule 4): an underscore inside a word never is."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _code(text: str) -> str:
    """A code span that holds ``text`` whatever backticks it has (``|`` escaped for tables)."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def guide_markdown(guide: Guide) -> str:
    """The page as Markdown (CommonMark with GFM tables), one sentence per line."""
    out = [f"# {_md(guide.title)}", ""]
    if guide.now is not None:
        out += [f"As of {_moment(guide.now)}.", ""]
    out += [_md(line) for line in _intro(guide)] + [""]
    out += ["## Headers", ""]
    for sentence, code in _header_lines(guide):
        out.append(_md(sentence) + (f": {_code(code)}." if code else ""))
    out.append("")
    if guide.versions is not None:
        out += ["## Versions", ""]
        for sentence, code in _version_lines(guide.versions):
            out.append(_md(sentence) + (f": {_code(code)}." if code else ""))
        out.append("")
    out += ["## Routes", "", "| route | idempotency key | rate limits | deprecated |"]
    out.append("| --- | --- | --- | --- |")
    for route in guide.routes:
        anchor = _anchor(route)
        key = route.key.requirement if route.key else "none"
        limits = ", ".join(p.name for p in route.limits) or "none"
        deprecated = _date(route.retirement.deprecated) if route.retirement else "no"
        out.append(
            f"| [{_code(f'{route.method} {route.path}')}](#{anchor}) | {key} | "
            f"{_md(limits)} | {deprecated} |"
        )
    for route in guide.routes:
        out += ["", f"### {_code(f'{route.method} {route.path}')}", ""]
        out += _md_route(route)
    return "\n".join(out).rstrip("\n") + "\n"


def _md_route(route: RouteDoc) -> list[str]:
    out = ["#### Idempotency key", ""]
    if route.key is None:
        out.append("This route takes no idempotency key.")
    else:
        out += [f"- {_md(s)}" + (f": {_code(c)}." if c else "") for s, c in _key_lines(route.key)]
    out += ["", "#### Rate limits", ""]
    if not route.limits:
        out.append("No rate limit applies to this route.")
    for policy in route.limits:
        out.append(f"Policy {_code(policy.name)}: {_md(policy.enforcement)}.")
        out.append(f"Counted {_md(policy.counted)}.")
        if policy.cost != 1:
            out.append(f"A request here counts as {policy.cost} requests.")
        out += ["", "| who | limits | RateLimit-Policy |", "| --- | --- | --- |"]
        for row in policy.rows:
            field = _code(row.policy_field) if row.policy_field else "the current period's"
            out.append(f"| {_md(_who(row))} | {_md('; '.join(row.limits))} | {field} |")
        out.append("")
        if policy.agreements:
            out += [_AGREEMENTS, ""]
    if out[-1] != "":
        out.append("")
    if route.retirement is not None:
        r = route.retirement
        out += ["#### Deprecation", ""]
        out += [f"- {_md(s)}" + (f": {_code(c)}." if c else "") for s, c in _retirement_lines(r)]
        if r.link is not None:
            out.append(f"- Migration notes ({_LINKED} {_REL_DEPRECATION}): <{r.link}>")
        if r.sunset_link is not None:
            out.append(f"- About the sunset ({_LINKED} {_REL_SUNSET}): <{r.sunset_link}>")
        if r.brownouts or r.schedule or r.upcoming:
            out += ["", _md(_BROWNOUT_INTRO + _critical(r)), ""]
            out += [f"- {_md(_window(w))}" for w in r.brownouts]
            if r.schedule is not None:
                out.append(f"- {_md('Scheduled: ' + r.schedule + '.')}")
            # The coming windows, when surefoot.contracts lists them (_next_windows).
            out += [f"- Next: {_md(_window(w))}" for w in r.upcoming]
        out.append("")
    out += ["#### Errors", ""]
    out += ["| status | code | title | what to do | retry the same request? |"]
    out.append("| --- | --- | --- | --- | --- |")
    for p in route.problems:
        out.append(
            f"| {p.status} | [{_code(p.code)}]({p.type}) | {_md(p.title)} | "
            f"{_md(p.recovery)} | {p.retry} |"
        )
    return out


def _anchor(route: RouteDoc) -> str:
    """GitHub's heading anchor of the route's heading (lower case, punctuation dropped)."""
    return re.sub(r"[^a-z0-9 _-]", "", f"{route.method} {route.path}".lower()).replace(" ", "-")


_INTRO = (
    "Every error is an RFC 9457 problem document (Content-Type: application/problem+json) "
    "with a stable code, a detail saying what to do next and a request_id to quote to support.",
    "Retry a request only where the tables below say so, waiting at least the seconds of "
    "Retry-After when a response has it, and with exponential backoff and jitter otherwise.",
)


def _intro(guide: Guide) -> tuple[str, ...]:
    if guide.client is None:
        return _INTRO
    return (
        f"This page is for the client {guide.client}: its own limits, sunsets and version "
        "are the ones given here.",
        *_INTRO,
    )


_LINKED = "each response links to it in a Link header with"
_REL_DEPRECATION = '`rel="deprecation"`'
_REL_SUNSET = '`rel="sunset"`'
_BROWNOUT_INTRO = (
    "Brownouts: before the sunset, requests inside these windows are refused exactly as after "
    "it (410 route_retired), so that you meet the sunset early"
)


_AGREEMENTS = "Some clients have other limits by agreement."


def _who(row: LimitRow) -> str:
    return row.who + (" (yours)" if row.yours and not row.who.startswith("you") else "")


def _critical(r: Retirement) -> str:
    return "." if r.brownout_critical else " (clients marked critical are spared)."


def _header_lines(guide: Guide) -> list[tuple[str, str | None]]:
    lines: list[tuple[str, str | None]] = []
    if guide.rate_headers:
        lines += [
            (
                "On a rate-limited route every response carries the limits (IETF "
                "draft-ietf-httpapi-ratelimit-headers-10), each limit an item named after "
                "its policy",
                "RateLimit-Policy",
            ),
            (
                "And what is left of each: r is the remaining quota, t the seconds until more "
                "is available",
                "RateLimit",
            ),
        ]
    if guide.legacy_headers:
        lines.append(
            (
                "And, for older clients, the limit closest to exhaustion",
                "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset",
            )
        )
    lines.append(
        (
            "A response that asks you to wait (409, 429, 503) says how long, in seconds; on a "
            "429 it equals the violated limit's t, and a client that waits that long is "
            "admitted",
            "Retry-After",
        )
    )
    lines.append(("Every response names its request for support", "X-Request-Id"))
    return lines


def _version_lines(v: VersionsDoc) -> list[tuple[str, str | None]]:
    lines: list[tuple[str, str | None]] = [
        (f"Versions: {', '.join(v.dates)} (latest: {v.dates[-1]}).", None),
        ("Choose a version per request with the header", v.header),
        (
            {
                "first_used": "Without it, a request uses your account's pinned version: the "
                "one set for you, or else the version of your first request (if that request "
                f"names none, {v.initial}).",
                "latest": "Without it, a request uses the version set for your account, or "
                "else the latest.",
            }[v.pin],
            None,
        ),
        ("An unknown version is refused with 400 version_unknown.", None),
        ("The API receives the version in effect in the header", v.forward_header),
    ]
    if v.pinned is not None:
        lines.append((f"Your account is pinned to {v.pinned}.", None))
    return lines


# -- HTML --------------------------------------------------------------------------------------

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
  color: #1b1f24; }
h1, h2, h3, h4 { line-height: 1.25; }
h3 { border-top: 1px solid #d0d7de; padding-top: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
code { background: #f6f8fa; padding: 0 .2rem; border-radius: 3px; }
.state { font-weight: bold; }
""".strip()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _sentence(sentence: str, code: str | None) -> str:
    return _e(sentence) + (f": <code>{_e(code)}</code>." if code else "")


def guide_html(guide: Guide) -> str:
    """The page as one self-contained HTML document (Rule 4)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(guide.title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(guide.title)}</h1>",
    ]
    if guide.now is not None:
        out.append(f"<p>As of {_e(_moment(guide.now))}.</p>")
    out += [f"<p>{_e(line)}</p>" for line in _intro(guide)]
    out += ["<h2>Headers</h2>", "<ul>"]
    out += [f"<li>{_sentence(s, c)}</li>" for s, c in _header_lines(guide)]
    out.append("</ul>")
    if guide.versions is not None:
        out += ['<h2 id="versions">Versions</h2>', "<ul>"]
        out += [f"<li>{_sentence(s, c)}</li>" for s, c in _version_lines(guide.versions)]
        out.append("</ul>")
    out += [
        "<h2>Routes</h2>",
        '<table id="routes">',
        "<thead><tr><th>route</th><th>idempotency key</th><th>rate limits</th>"
        "<th>deprecated</th></tr></thead>",
        "<tbody>",
    ]
    for route in guide.routes:
        key = route.key.requirement if route.key else "none"
        limits = ", ".join(p.name for p in route.limits) or "none"
        deprecated = _date(route.retirement.deprecated) if route.retirement else "no"
        out.append(
            f'<tr><td><a href="#{_e(_anchor(route))}"><code>{_e(route.method)} '
            f"{_e(route.path)}</code></a></td><td>{_e(key)}</td><td>{_e(limits)}</td>"
            f"<td>{_e(deprecated)}</td></tr>"
        )
    out += ["</tbody>", "</table>"]
    for route in guide.routes:
        out += _html_route(route)
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _html_route(route: RouteDoc) -> list[str]:
    out = [
        f'<section class="route" id="{_e(_anchor(route))}">',
        f"<h3><code>{_e(route.method)} {_e(route.path)}</code></h3>",
        "<h4>Idempotency key</h4>",
    ]
    if route.key is None:
        out.append("<p>This route takes no idempotency key.</p>")
    else:
        out.append("<ul>")
        out += [f"<li>{_sentence(s, c)}</li>" for s, c in _key_lines(route.key)]
        out.append("</ul>")
    out.append("<h4>Rate limits</h4>")
    if not route.limits:
        out.append("<p>No rate limit applies to this route.</p>")
    for policy in route.limits:
        out.append(
            f"<p>Policy <code>{_e(policy.name)}</code>: {_e(policy.enforcement)}. "
            f"Counted {_e(policy.counted)}."
            + (f" A request here counts as {policy.cost} requests." if policy.cost != 1 else "")
            + "</p>"
        )
        out.append(
            "<table><thead><tr><th>who</th><th>limits</th><th>RateLimit-Policy</th></tr>"
            "</thead><tbody>"
        )
        for row in policy.rows:
            field = (
                f"<code>{_e(row.policy_field)}</code>"
                if row.policy_field
                else "the current period's"
            )
            out.append(
                f"<tr><td>{_e(_who(row))}</td><td>{_e('; '.join(row.limits))}</td>"
                f"<td>{field}</td></tr>"
            )
        out.append("</tbody></table>")
        if policy.agreements:
            out.append(f"<p>{_e(_AGREEMENTS)}</p>")
    if route.retirement is not None:
        r = route.retirement
        out += ["<h4>Deprecation</h4>", "<ul>"]
        out += [f"<li>{_sentence(s, c)}</li>" for s, c in _retirement_lines(r)]
        if r.link is not None:
            out.append(
                f"<li>Migration notes ({_LINKED} <code>rel=&quot;deprecation&quot;</code>): "
                f'<a href="{_e(r.link)}">{_e(r.link)}</a></li>'
            )
        if r.sunset_link is not None:
            out.append(
                f"<li>About the sunset ({_LINKED} <code>rel=&quot;sunset&quot;</code>): "
                f'<a href="{_e(r.sunset_link)}">{_e(r.sunset_link)}</a></li>'
            )
        out.append("</ul>")
        if r.brownouts or r.schedule or r.upcoming:
            out += [f"<p>{_e(_BROWNOUT_INTRO + _critical(r))}</p>", "<ul>"]
            out += [f"<li>{_e(_window(w))}</li>" for w in r.brownouts]
            if r.schedule is not None:
                out.append(f"<li>Scheduled: {_e(r.schedule)}.</li>")
            out += [f"<li>Next: {_e(_window(w))}</li>" for w in r.upcoming]
            out.append("</ul>")
    out += [
        "<h4>Errors</h4>",
        '<table class="errors"><thead><tr><th>status</th><th>code</th><th>title</th>'
        "<th>what to do</th><th>retry the same request?</th></tr></thead><tbody>",
    ]
    for p in route.problems:
        out.append(
            f'<tr><td>{p.status}</td><td><a href="{_e(p.type)}"><code>{_e(p.code)}</code></a>'
            f"</td><td>{_e(p.title)}</td><td>{_e(p.recovery)}</td><td>{_e(p.retry)}</td></tr>"
        )
    out += ["</tbody></table>", "</section>"]
    return out


# -- the whole ---------------------------------------------------------------------------------


def consumer_docs(
    config: GatewayConfig,
    *,
    format: Literal["markdown", "html"] = "markdown",
    now: float | None = None,
    title: str | None = None,
    client: str | None = None,
) -> str:
    """The consumer page of a policy file: each route's idempotency key, limits, deprecation
    and errors with what to do next (``surefoot docs``).

    Example:
        >>> config = load_config("policy.toml")
        >>> Path("api.html").write_text(consumer_docs(config, format="html"))

    Args:
        config: a loaded policy file (``load_config``).
        format: ``"markdown"`` or ``"html"`` (one self-contained page).
        now: unix seconds deciding each deprecation's state, and printed on the page;
            None: no state and no date (the page depends on the file alone).
        title: the page's title.
        client: a ``[[clients]]`` name: that client's own page (its limits by agreement,
            tier, sunset, pinned version, rollout state, and only the deprecations that
            apply to it); None: the page every consumer reads, which names no client.

    Raises:
        ValueError: an unknown ``format``, or ``client`` is not a ``[[clients]]`` name.
    """
    guide = consumer_guide(config, now=now, title=title, client=client)
    if format == "html":
        return guide_html(guide)
    if format == "markdown":
        return guide_markdown(guide)
    raise ValueError(f"format: expected 'markdown' or 'html', got {format!r}")
