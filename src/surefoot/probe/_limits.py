"""The probe's rate-limit, error-format and timeout checks (``LIMIT_CHECKS``).

Each check sends through the ``ProbeClient`` (``_model``) and hands what came back to a
small pure judge (``judge_*``: exchanges in, a ``Judgement`` out), so the verdicts are
table-tested without a server. The parsers under them are pure too: ``read_fields`` (the
draft-10 ``RateLimit``/``RateLimit-Policy`` structured lists, read with ``http_sf``, and
the legacy ``X-RateLimit-*``), ``retry_after_seconds`` and ``find_leaks``.

- ``rate_limit_headers``: sends the target's request until a 429 (at most
  ``target.limit_requests``) and reports the fields seen, the limit observed, and whether
  the remaining count told the truth.
- ``retry_after``: reaches a 429, waits exactly its ``Retry-After`` (``client.wait``), sends
  once more: admitted is honest, refused again is dishonest.
- ``limit_scope``: reaches a 429 with the target's credential, then sends with
  ``target.alt_headers`` at once, then with the first again: per credential or global.
- ``error_format``: provokes errors (an unknown path; a malformed JSON body on a write) and
  reads their bodies: problem+json, a machine-readable code, leaked internals.
- ``timeouts``: one GET of ``target.slow_url``: how long the partner holds it, and whether
  it answers by itself (a 504) or the probe's read timeout comes first.

Rule 1: every loop is bounded: a check sends at most ``target.limit_requests + 2``
        requests (``error_format`` 2, ``timeouts`` 1) and waits at most once. Of a run to
        a 429, the evidence keeps the first answer and the last two.
Rule 2: a check's requests are numbered from its own base (``_BASE``), so ``{{n}}`` never
        repeats between checks of one run; a write gets a fresh key per request.
Rule 3: ``retry_after`` never concludes "honest" or "dishonest" from an answer that did
        not come: no answer, no 429, or a wait beyond the deadline is ``inconclusive``.
Rule 4: ``limit_scope`` is a fact, not a grade: per credential or global both ``pass``,
        with different advice; it is ``inconclusive`` when the window may have reset
        between its requests (the first credential admitted again).
Rule 5: ``error_format`` fails on any leak (a stack trace, an exception, SQL, a source
        path) and on errors without a machine-readable code; facts say which.
Rule 6: ``rate_limit_headers`` states the limit a client may throttle at as the facts
        ``limit`` (requests) and ``window`` (seconds), which the report's policy reads, and
        ``limit_from`` (where they come from); none when a field is malformed. From
        ``RateLimit-Policy``: its first member with a quota ``q`` and a window ``w``.
        Else from ``X-RateLimit-Limit``, the window read off the answer that opened one
        (its ``X-RateLimit-Remaining`` is the limit less one): its ``X-RateLimit-Reset``
        as seconds from now, or as a Unix time less the answer's own ``Date`` (rounded
        up to a whole second: the window read is never shorter than the partner's
        reset says). The window stays unknown (``window`` None, so no throttle) when
        no answer opened a window, an epoch comes without ``Date``, or the reset moves
        later within the window (not a fixed window: a bucket refilling).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from surefoot.probe._model import BudgetExhausted, Exchange, Finding, ProbeClient, Target, Verdict

__all__ = [
    "LIMIT_CHECKS",
    "Check",
    "Judgement",
    "LimitFields",
    "MALFORMED_BODY",
    "find_leaks",
    "judge_errors",
    "judge_headers",
    "judge_retry_after",
    "judge_scope",
    "judge_timeout",
    "machine_code",
    "read_fields",
    "retry_after_seconds",
]

Check = Callable[[ProbeClient, Target, str], Awaitable[Finding]]

#: Where each check's request numbers start (Rule 2); ``limit_requests`` is at most 1000.
_BASE = {
    "rate_limit_headers": 10_000,
    "retry_after": 20_000,
    "limit_scope": 30_000,
    "error_format": 40_000,
    "timeouts": 50_000,
}
#: The body ``error_format`` sends to a write: JSON cut short.
MALFORMED_BODY = '{"surefoot_probe": '
#: Statuses a partner answers when it gave up on a slow request itself.
_GAVE_UP = frozenset({408, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Judgement:
    """A judge's conclusion: a ``Finding`` without its check, target and evidence."""

    verdict: Verdict
    summary: str
    advice: str
    facts: Mapping[str, Any] = field(default_factory=dict)


# -- parsing (pure) ----------------------------------------------------------------------------


Members = tuple[tuple[str, Mapping[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class LimitFields:
    """The rate-limit fields of one response.

    ``policy`` and ``limit`` are the draft-10 ``RateLimit-Policy`` and ``RateLimit`` lists
    (name, parameters), None when absent (or unparsed: ``http_sf`` is not installed);
    ``legacy`` the ``X-RateLimit-*`` fields by lower-case name; ``malformed`` the fields
    that are present but do not parse; ``unparsed`` the draft-10 fields present but not
    read (without ``http_sf``).
    """

    policy: Members | None = None
    limit: Members | None = None
    legacy: Mapping[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    malformed: tuple[str, ...] = ()
    unparsed: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """``draft-10`` and/or ``x-ratelimit``: which families of fields were sent."""
        out = []
        draft = {"ratelimit", "ratelimit-policy"}
        if self.policy or self.limit or draft & {*self.malformed, *self.unparsed}:
            out.append("draft-10")
        if self.legacy:
            out.append("x-ratelimit")
        return tuple(out)

    @property
    def remaining(self) -> int | None:
        """Requests left: the least ``r`` of ``RateLimit``, else ``X-RateLimit-Remaining``."""
        rs = [p["r"] for _, p in self.limit or () if isinstance(p.get("r"), int)]
        if rs:
            return int(min(rs))
        value = self.legacy.get("x-ratelimit-remaining", "")
        return int(value) if value.isdigit() else None

    @property
    def reset(self) -> int | None:
        """``t`` of the ``RateLimit`` member with the fewest requests left."""
        members = [p for _, p in self.limit or () if isinstance(p.get("r"), int)]
        if not members:
            return None
        t = min(members, key=lambda p: p["r"]).get("t")
        return t if isinstance(t, int) else None


def _combined(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def _members(value: str) -> Members | None:
    """A structured-field list of named items (RFC 9651); None when malformed."""
    import http_sf  # the probe extra's; read_fields checks that it is there

    try:
        parsed = http_sf.parse(value.encode(), tltype="list")
    except (http_sf.StructuredFieldError, UnicodeEncodeError):
        return None
    if not isinstance(parsed, list):  # pragma: no cover - tltype="list" parses a list
        return None
    out = []
    for member in parsed:
        if not isinstance(member, tuple) or isinstance(member[0], list):
            return None  # an inner list is no named limit
        item, params = member
        if not isinstance(item, (str, http_sf.Token)):  # a String or a Token
            return None
        out.append((str(item), dict(params)))
    return tuple(out)


def _have_http_sf() -> bool:
    try:
        import http_sf  # noqa: F401
    except ImportError:
        return False
    return True


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_fields(headers: Sequence[tuple[str, str]]) -> LimitFields:
    """The rate-limit fields of one response's ``headers`` (repeated lines combined)."""
    malformed, unparsed = [], []
    parsed: dict[str, Members | None] = {}
    for name in ("ratelimit-policy", "ratelimit"):
        value = _combined(headers, name)
        parsed[name] = None
        if value is None:
            continue
        if not _have_http_sf():
            unparsed.append(name)
            continue
        parsed[name] = _members(value)
        if parsed[name] is None:
            malformed.append(name)
    legacy = {k.lower(): v.strip() for k, v in headers if k.lower().startswith("x-ratelimit-")}
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining"):
        if name in legacy and not legacy[name].isdigit():
            malformed.append(name)
    if "x-ratelimit-reset" in legacy and not _number(legacy["x-ratelimit-reset"]):
        malformed.append("x-ratelimit-reset")
    return LimitFields(
        policy=parsed["ratelimit-policy"],
        limit=parsed["ratelimit"],
        legacy=legacy,
        retry_after=_combined(headers, "retry-after"),
        malformed=tuple(malformed),
        unparsed=tuple(unparsed),
    )


def retry_after_seconds(value: str, *, date: str | None) -> float | None:
    """``Retry-After`` (RFC 9110 section 10.2.3) as seconds to wait, or None if malformed.

    delay-seconds are taken as they are; an HTTP-date is counted from the response's own
    ``Date`` (``date``), the server's clock (None without it: the probe reads no clock).
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    if date is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        now = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


#: What internals look like in an error body: name -> pattern.
_LEAKS = {
    "stack trace": re.compile(
        r"Traceback \(most recent call last\)|\bat [\w$.]+\([\w$]+\.java:\d+\)"
    ),
    "source line": re.compile(r'File "[^"]+", line \d+'),
    "exception": re.compile(r"\b[A-Z]\w*(?:Exception|Error): |\bException:"),
    "SQL": re.compile(
        r"\bSELECT\b[^\n]{1,200}\bFROM\b|\bINSERT INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE FROM\b"
        r"|(?i:syntax error at or near|\bSQLSTATE\b|\bORA-\d{5}\b"
        r"|\b(?:sqlite3|psycopg2?|pymysql|sqlalchemy)\.\w)"
    ),
    "file path": re.compile(
        r"(?:/home/|/srv/|/usr/(?:local/)?lib/|/var/www/|site-packages/|\b[A-Z]:\\\\?\w)"
        r"|\b\w+\.(?:py|rb|php|java|go|js|ts|cs):\d+"
    ),
}


def find_leaks(text: str) -> tuple[str, ...]:
    """The kinds of internal detail ``text`` shows (``_LEAKS``' names), in table order."""
    return tuple(name for name, pattern in _LEAKS.items() if pattern.search(text))


_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,99}")


def machine_code(body: str) -> str | None:
    """The machine-readable code of an error body, or None.

    Looked for, in order: ``code``; a problem's ``type`` other than ``about:blank``;
    ``error.code`` / ``error.type``; ``error`` when it is one token (``not_found``);
    ``errors[0].code``; FastAPI's ``detail[0].type``.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    candidates: list[Any] = [doc.get("code")]
    if doc.get("type") != "about:blank":
        candidates.append(doc.get("type"))
    error, errors, detail = doc.get("error"), doc.get("errors"), doc.get("detail")
    if isinstance(error, dict):
        candidates += [error.get("code"), error.get("type")]
    elif isinstance(error, str) and _TOKEN.fullmatch(error):
        candidates.append(error)
    for many in (errors, detail):
        if isinstance(many, list) and many and isinstance(many[0], dict):
            candidates += [many[0].get("code"), many[0].get("type")]
    for value in candidates:
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


# -- judges (pure) -----------------------------------------------------------------------------


def _first_429(exchanges: Sequence[Exchange]) -> int | None:
    return next((i for i, e in enumerate(exchanges) if e.status == 429), None)


def _members_facts(members: Members | None) -> dict[str, dict[str, Any]] | None:
    if members is None:
        return None
    return {name: dict(params) for name, params in members}


def _whole(value: Any) -> int | None:
    """``value`` if it is a whole number above 0 (a structured field's Integer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _epoch(reset: str) -> bool:
    return float(reset) > 1e9


def _advertised_limit(
    answered: Sequence[Exchange], fields: Sequence[LimitFields], last: LimitFields
) -> dict[str, Any]:
    """The ``limit``, ``window`` and ``limit_from`` facts (Rule 6); {} when no limit is sent."""
    for _, params in last.policy or ():
        q, w = _whole(params.get("q")), _whole(params.get("w"))
        if q is not None and w is not None:
            return {"limit": q, "window": float(w), "limit_from": "ratelimit-policy"}
    for i, f in enumerate(fields):
        limit, remaining = f.legacy.get("x-ratelimit-limit"), f.legacy.get("x-ratelimit-remaining")
        if limit is None or remaining is None or int(limit) < 1:
            continue
        if int(remaining) != int(limit) - 1:
            continue  # not the first answer of a window
        window = _window(answered[i], f, fields[i + 1 :])
        if window is not None:
            return {"limit": int(limit), "window": window, "limit_from": "x-ratelimit"}
        break
    limit = last.legacy.get("x-ratelimit-limit")
    if limit is None or int(limit) < 1:
        return {}
    return {"limit": int(limit), "window": None, "limit_from": "x-ratelimit"}


def _window(opening: Exchange, fields: LimitFields, later: Sequence[LimitFields]) -> float | None:
    """The window's length, from the ``X-RateLimit-Reset`` of the answer that opened it
    (Rule 6), or None: no reset, an epoch without ``Date``, or a reset that moves."""
    reset = fields.legacy.get("x-ratelimit-reset")
    if reset is None or not math.isfinite(float(reset)):
        return None
    others = [f.legacy["x-ratelimit-reset"] for f in later if "x-ratelimit-reset" in f.legacy]
    if not _epoch(reset):  # seconds from now: they only count down in a fixed window
        if any(_epoch(o) or float(o) > float(reset) for o in others):
            return None
        return float(reset) if float(reset) > 0 else None
    if any(not _epoch(o) or abs(float(o) - float(reset)) > 1 for o in others):
        return None  # a window that moves (a bucket refilling) has no fixed length
    date = opening.header("date")
    try:
        now = email.utils.parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError, IndexError):
        now = None
    if now is None:
        return None
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    seconds = math.ceil(float(reset) - now.timestamp())  # Date is whole seconds
    return float(seconds) if seconds > 0 else None


def judge_headers(exchanges: Sequence[Exchange], *, bound: int) -> Judgement:
    """What ``rate_limit_headers`` concludes from its requests, in order (a 429 last, if any)."""
    if not exchanges or exchanges[-1].status is None:
        error = exchanges[-1].error if exchanges else "nothing sent"
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"request {len(exchanges)} got no answer ({error})",
            "Check the URL and that the partner is up, then probe again.",
        )
    answered = list(exchanges)
    fields = [read_fields(e.response_headers) for e in answered]
    kinds = sorted({k for f in fields for k in f.kinds})
    malformed = sorted({m for f in fields for m in f.malformed})
    hit = _first_429(answered)
    last = fields[hit] if hit is not None else fields[-1]
    facts: dict[str, Any] = {
        "requests": len(exchanges),
        "fields": kinds,
        "admitted_before_429": hit,
        "policy": _members_facts(last.policy),
        "ratelimit": _members_facts(last.limit),
        "x_ratelimit": dict(last.legacy),
        "retry_after": last.retry_after,
    }
    resets = [f.legacy["x-ratelimit-reset"] for f in fields if "x-ratelimit-reset" in f.legacy]
    if resets and not malformed:  # an epoch (slowapi, GitHub) or seconds from now
        facts["x_ratelimit_reset"] = "epoch" if float(resets[-1]) > 1e9 else "seconds"
    if not malformed:  # Rule 6: the limit a client may throttle at
        facts.update(_advertised_limit(answered, fields, last))
    if malformed:
        return Judgement(
            Verdict.FAIL,
            f"malformed rate-limit fields: {', '.join(malformed)}",
            "Do not pace from these fields; throttle on your side and back off on 429.",
            {**facts, "malformed": malformed},
        )
    if hit is None:
        sent = ", ".join(kinds) or "no rate-limit fields"
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"no 429 within {len(exchanges)} requests (bound {bound}); it sends {sent}",
            "Raise limit_requests above the partner's limit to see a 429, or ask the partner "
            "for its limits.",
            facts,
        )
    if not kinds:
        return Judgement(
            Verdict.FAIL,
            f"429 after {hit} admitted requests, with no rate-limit fields on any answer",
            "The client cannot see its budget: throttle on your side "
            + (f"at {hit} requests per window at most" if hit else "below the partner's limit")
            + ", and back off on 429.",
            facts,
        )
    told = fields[hit - 1].remaining if hit > 0 else None
    if told is not None and told > 0:
        return Judgement(
            Verdict.FAIL,
            f"the answer before the 429 said {told} requests remained",
            "Do not trust the remaining count (another client may share the limit): back "
            "off on 429 and throttle on your side.",
            facts,
        )
    if last.remaining not in (None, 0):
        return Judgement(
            Verdict.FAIL,
            f"the 429 itself says {last.remaining} requests remain",
            "Do not trust the remaining count: back off on 429 and throttle on your side.",
            facts,
        )
    pace = (
        "pace from RateLimit's r and t (draft-10)"
        if "draft-10" in kinds
        else "pace from X-RateLimit-Remaining and -Reset"
    )
    return Judgement(
        Verdict.PASS,
        f"sends {', '.join(kinds)} fields; 429 after {hit} admitted requests, "
        "with the remaining count at 0",
        f"Throttle at the advertised limit and {pace}.",
        facts,
    )


def judge_retry_after(
    limited: Exchange | None, after: Exchange | None, *, waited: float | None = None
) -> Judgement:
    """What ``retry_after`` concludes: the first 429 (None: none came), and the request
    sent after waiting ``waited`` seconds (None: not sent)."""
    if limited is None:
        return Judgement(
            Verdict.INCONCLUSIVE,
            "no 429 within the bound: nothing to wait for",
            "Raise limit_requests above the partner's limit to see a 429.",
        )
    fields = read_fields(limited.response_headers)
    facts: dict[str, Any] = {"retry_after": fields.retry_after, "ratelimit_t": fields.reset}
    if fields.retry_after is None:
        return Judgement(
            Verdict.FAIL,
            "its 429 carries no Retry-After",
            "Back off exponentially with jitter on 429 (there is no Retry-After to honour), "
            "and throttle on your side.",
            facts,
        )
    seconds = retry_after_seconds(fields.retry_after, date=limited.header("date"))
    if seconds is None:
        return Judgement(
            Verdict.FAIL,
            f"its 429's Retry-After is malformed: {fields.retry_after!r}",
            "Ignore its Retry-After; back off exponentially with jitter on 429.",
            facts,
        )
    facts["retry_after_seconds"] = seconds
    if fields.reset is not None:
        facts["t_equals_retry_after"] = float(fields.reset) == seconds
    if after is None or after.status is None:
        why = "the wait was beyond the probe's deadline" if after is None else after.error
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"Retry-After says {seconds:g} s; no answer after the wait ({why})",
            "Probe again with a longer max_duration.",
            facts,
        )
    facts["after_status"] = after.status
    facts["waited"] = seconds if waited is None else waited
    if after.status == 429:
        again = read_fields(after.response_headers).retry_after
        return Judgement(
            Verdict.FAIL,
            f"dishonest Retry-After: after waiting the {seconds:g} s it asked for, the request "
            f"was refused again (Retry-After {again})",
            "Do not rely on its Retry-After alone: after a refused retry, back off "
            "exponentially, and throttle on your side below the limit.",
            {**facts, "retry_after_again": again},
        )
    return Judgement(
        Verdict.PASS,
        f"honest Retry-After: waiting exactly {seconds:g} s was admitted ({after.status})",
        "Honour its Retry-After (surefoot.client does: honour_retry_after).",
        facts,
    )


def judge_scope(
    first: Sequence[Exchange], alt: Exchange | None, again: Exchange | None
) -> Judgement:
    """What ``limit_scope`` concludes: the first credential's requests (a 429 last), the
    second credential's request, and the first credential's once more."""
    if _first_429(first) is None:
        return Judgement(
            Verdict.INCONCLUSIVE,
            "no 429 with the first credential within the bound",
            "Raise limit_requests above the partner's limit to see a 429.",
        )
    if alt is None or alt.status is None:
        return Judgement(
            Verdict.INCONCLUSIVE,
            "no answer to the second credential" + (f" ({alt.error})" if alt else ""),
            "Probe again.",
        )
    facts: dict[str, Any] = {"alt_status": alt.status}
    if alt.status in (401, 403):
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"the second credential was refused ({alt.status})",
            "Give alt_headers a valid second credential.",
            facts,
        )
    if alt.status == 429:
        return Judgement(
            Verdict.PASS,
            "limits globally (or per client address): once the first credential hit the "
            "limit, the second was refused at once",
            "Share one throttle across every credential and process calling this partner: "
            "another key buys no capacity, and one noisy caller starves the others.",
            {**facts, "scope": "global"},
        )
    if again is None or again.status is None:
        return Judgement(
            Verdict.INCONCLUSIVE, "no answer to the first credential's last request", "Probe again."
        )
    facts["again_status"] = again.status
    if again.status != 429:
        return Judgement(
            Verdict.INCONCLUSIVE,
            "the first credential was admitted again: the window reset between the requests",
            "Probe again with a longer window, or a lower limit_requests.",
            facts,
        )
    return Judgement(
        Verdict.PASS,
        "limits per credential: the second was admitted while the first was refused",
        "Throttle per credential: each key has its own budget.",
        {**facts, "scope": "per_key"},
    )


def judge_errors(exchanges: Sequence[Exchange]) -> Judgement:
    """What ``error_format`` concludes from the answers to its provocations."""
    errors = [e for e in exchanges if e.status is not None and e.status >= 400]
    if not errors:
        statuses = [e.status for e in exchanges]
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"no error provoked (statuses {statuses})",
            "Nothing to judge: probe an endpoint that refuses bad input.",
        )
    rows: list[dict[str, Any]] = []
    for e in errors:
        content_type = (e.header("content-type") or "").split(";")[0].strip().lower()
        rows.append(
            {
                "status": e.status,
                "content_type": content_type,
                "problem_json": content_type == "application/problem+json",
                "code": machine_code(e.response_body),
                "leaks": list(find_leaks(e.response_body)),
            }
        )
    leaks = sorted({leak for row in rows for leak in row["leaks"]})
    facts: dict[str, Any] = {
        "errors": rows,
        "problem_json": all(row["problem_json"] for row in rows),
        "machine_codes": all(row["code"] for row in rows),
        "leaks": leaks,
    }
    if leaks:
        return Judgement(
            Verdict.FAIL,
            f"its error bodies leak internals: {', '.join(leaks)}",
            "Never show or log these bodies unfiltered (they may hold secrets); report the "
            "leak to the partner; branch on the status code only.",
            facts,
        )
    if not facts["machine_codes"]:
        missing = [row["status"] for row in rows if not row["code"]]
        return Judgement(
            Verdict.FAIL,
            f"errors without a machine-readable code (statuses {missing})",
            "Branch on the status code only; keep the body as text for logs, never parse "
            "its message.",
            facts,
        )
    form = "problem+json" if facts["problem_json"] else "JSON (not problem+json)"
    codes = sorted({str(row["code"]) for row in rows})
    return Judgement(
        Verdict.PASS,
        f"errors are {form} with a machine-readable code ({', '.join(codes)}), no leaks",
        "Branch on the code, never on the human message.",
        facts,
    )


def judge_timeout(exchange: Exchange, *, read_timeout: float | None) -> Judgement:
    """What ``timeouts`` concludes from the one slow request."""
    held = round(exchange.seconds, 3)
    facts: dict[str, Any] = {
        "held_seconds": held,
        "status": exchange.status,
        "read_timeout": read_timeout,
    }
    if exchange.status is None:
        error = exchange.error or "no answer"
        timed_out = "timeout" in error.lower() or "timed out" in error.lower()
        what = (
            f"held the request past the probe's read timeout ({held:g} s) without answering"
            if timed_out
            else f"dropped the request after {held:g} s without an answer ({error})"
        )
        return Judgement(
            Verdict.FAIL,
            what,
            "Set a read timeout your callers can afford; a write that timed out has an "
            "unknown outcome: retry it only with the same idempotency key, or reconcile.",
            {**facts, "timed_out": timed_out},
        )
    if exchange.status == 429:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"the slow request was refused with 429 after {held:g} s: rate limited, not timed",
            "Probe timeouts on a target whose limit the other checks do not use up, or run "
            "them alone.",
            {**facts, "timed_out": False},
        )
    if exchange.status in _GAVE_UP:
        return Judgement(
            Verdict.PASS,
            f"it gave up on the slow request itself after {held:g} s ({exchange.status})",
            f"Set the client's read timeout above {held:g} s so its own answer arrives; a "
            f"write answered {exchange.status} may still have happened: reconcile it.",
            {**facts, "timed_out": False},
        )
    return Judgement(
        Verdict.PASS,
        f"answered the slow request after {held:g} s ({exchange.status})",
        f"Set the client's read timeout above {held:g} s, with a margin.",
        {**facts, "timed_out": False},
    )


# -- the checks (send, then judge) -----------------------------------------------------------


def _finding(
    name: str, target: Target, judgement: Judgement, evidence: Sequence[Exchange]
) -> Finding:
    return Finding(
        check=name,
        target=target.name,
        verdict=judgement.verdict,
        summary=judgement.summary,
        advice=judgement.advice,
        evidence=tuple(evidence),
        facts=judgement.facts,
    )


def _skipped(name: str, target: Target, why: str, advice: str) -> Finding:
    return Finding(name, target.name, Verdict.SKIPPED, why, advice)


async def _send(
    client: ProbeClient, target: Target, n: int, headers: Mapping[str, str] | None = None
) -> Exchange:
    """The target's request number ``n`` (with ``headers`` replacing its own)."""
    sent = {**target.headers, **(headers or {})}
    if target.writes:  # a fresh key: each request is a new operation (Rule 2)
        sent[target.key_header] = client.render("{{uuid}}", n)
    body = None if target.body is None else client.render(target.body, n)
    return await client.send(target.method, client.render(target.url, n), headers=sent, body=body)


async def _until_429(
    client: ProbeClient, target: Target, base: int, headers: Mapping[str, str] | None = None
) -> list[Exchange]:
    """The target's request, sent until a 429 or no answer, ``limit_requests`` at most."""
    seen: list[Exchange] = []
    for i in range(target.limit_requests):
        exchange = await _send(client, target, base + i, headers)
        seen.append(exchange)
        if exchange.status in (429, None):
            break
    return seen


def _kept(exchanges: Sequence[Exchange]) -> list[Exchange]:
    """The evidence worth keeping of a run to a 429: the first, the last two."""
    if len(exchanges) <= 3:
        return list(exchanges)
    return [exchanges[0], *exchanges[-2:]]


async def rate_limit_headers(client: ProbeClient, target: Target, run: str) -> Finding:
    seen = await _until_429(client, target, _BASE["rate_limit_headers"])
    judgement = judge_headers(seen, bound=target.limit_requests)
    return _finding("rate_limit_headers", target, judgement, _kept(seen))


async def retry_after(client: ProbeClient, target: Target, run: str) -> Finding:
    base = _BASE["retry_after"]
    seen = await _until_429(client, target, base)
    limited = seen[-1] if seen and seen[-1].status == 429 else None
    after: Exchange | None = None
    seconds = None
    if limited is not None:
        value = limited.header("retry-after")
        if value is not None:
            seconds = retry_after_seconds(value, date=limited.header("date"))
    if limited is not None and seconds is not None:
        try:
            await client.wait(seconds)
        except BudgetExhausted:
            after = None  # Rule 3: beyond the deadline, nothing is concluded
        else:
            after = await _send(client, target, base + len(seen))
    judgement = judge_retry_after(limited, after, waited=seconds)
    return _finding("retry_after", target, judgement, _kept(seen) + ([after] if after else []))


async def limit_scope(client: ProbeClient, target: Target, run: str) -> Finding:
    if not target.alt_headers:
        return _skipped(
            "limit_scope",
            target,
            "needs a second credential (alt_headers)",
            "Give the target alt_headers: a second credential of the same tier.",
        )
    base = _BASE["limit_scope"]
    first = await _until_429(client, target, base)
    alt = again = None
    if first and first[-1].status == 429:
        alt = await _send(client, target, base + len(first), target.alt_headers)
        if alt.status not in (None, 401, 403, 429):
            again = await _send(client, target, base + len(first) + 1)
    judgement = judge_scope(first, alt, again)
    extra = [e for e in (alt, again) if e is not None]
    return _finding("limit_scope", target, judgement, _kept(first) + extra)


def _unknown_path(url: str, run: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/surefoot-probe-no-such-path-{run}", "", ""))


async def error_format(client: ProbeClient, target: Target, run: str) -> Finding:
    base = _BASE["error_format"]
    seen = [
        await client.send(
            "GET",
            _unknown_path(client.render(target.url, base), run),
            headers=dict(target.headers),
        )
    ]
    if target.writes:  # a write endpoint must refuse a body it cannot read
        headers = {**target.headers, "Content-Type": "application/json"}
        headers[target.key_header] = client.render("{{uuid}}", base + 1)
        url = client.render(target.url, base + 1)
        seen.append(await client.send(target.method, url, headers=headers, body=MALFORMED_BODY))
    return _finding("error_format", target, judge_errors(seen), seen)


async def timeouts(client: ProbeClient, target: Target, run: str) -> Finding:
    if target.slow_url is None:
        return _skipped(
            "timeouts",
            target,
            "needs a slow endpoint (slow_url)",
            "Give the target slow_url: an endpoint that takes long to answer.",
        )
    url = client.render(target.slow_url, _BASE["timeouts"])
    headers = dict(target.headers)
    exchanges = [await client.send("GET", url, headers=headers, read_timeout=target.slow_timeout)]
    # The rate-limit checks before it may have used the limit up: wait once for it (a
    # short Retry-After only), so that the partner's handling of a slow request is timed.
    first = exchanges[0]
    value = first.header("retry-after") if first.status == 429 else None
    wait = retry_after_seconds(value, date=first.header("date")) if value else None
    if wait is not None and wait <= _TIMEOUTS_WAIT:
        try:
            await client.wait(wait)
            exchanges.append(
                await client.send("GET", url, headers=headers, read_timeout=target.slow_timeout)
            )
        except BudgetExhausted:
            pass  # judged from the 429: inconclusive
    judgement = judge_timeout(exchanges[-1], read_timeout=target.slow_timeout)
    return _finding("timeouts", target, judgement, exchanges)


#: The longest Retry-After ``timeouts`` waits for before its one slow request, in seconds.
_TIMEOUTS_WAIT = 10.0


#: The checks of this module by the name a probe file gives them.
LIMIT_CHECKS: dict[str, Check] = {
    "rate_limit_headers": rate_limit_headers,
    "retry_after": retry_after,
    "limit_scope": limit_scope,
    "error_format": error_format,
    "timeouts": timeouts,
}
