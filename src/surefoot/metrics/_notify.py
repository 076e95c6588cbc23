"""From alerts to notifications: grouping, timing and silences, Alertmanager's way.

Pure: no I/O, no clock (every time is a parameter, in unix seconds). The gateway runs one
``Dispatcher`` per worker, feeds it the alerts of each evaluation and the silences read
from the shared board, claims each ``Notification`` in the board by its ``fingerprint``
(so that one worker sends it) and posts ``slack_payload(notification)`` to the webhook.

A group is the set of firing alerts that share the values of the route's ``group_by``
labels (a label an alert lacks is left out of its group's labels). Each group lives
through::

    (none) ──a firing alert that no active silence matches──► WAITING
    WAITING ──group_wait after the group was made, alerts to report──► SENT
    WAITING ──group_wait after the group was made, nothing to report──► (forgotten)
    SENT ──group_interval after the last send, a change──► SENT
    SENT ──repeat_interval after the last send, no change, still firing──► SENT
    SENT ──group_interval after the last send, nothing firing──► (forgotten), after one
           last notification of the resolved alerts when send_resolved

Rule 1: only ``firing`` alerts notify; a ``pending`` one is not in any group yet.
Rule 2: a group's first notification is sent ``group_wait`` after the group was made, so
        that alerts starting together arrive in one message.
Rule 3: after a send, the group is looked at again no sooner than ``group_interval``
        after it. It is sent again when it changed: a firing alert that was not in the
        last notification, or (with ``send_resolved``) an alert of the last notification
        that stopped firing. Unchanged and still firing, it is sent again once
        ``repeat_interval`` has passed since the last send. So two notifications of one
        group are never less than ``group_interval`` apart (``repeat_interval`` may not
        be shorter than ``group_interval``).
Rule 4: every notification holds all the group's firing alerts, and the alerts resolved
        since the last one (with ``send_resolved``), each reported resolved once. A
        resolved alert is reported as it was last sent.
Rule 5: when nothing in a group fires any more, the group sends one resolved
        notification (with ``send_resolved``, if it has a resolved alert to report) and
        is forgotten; an alert of that group firing later makes a new group
        (``group_wait`` again). So the state held is bounded by the alerts firing.
Rule 6: a silence is active from ``starts_at`` (included) to ``ends_at`` (excluded). An
        alert that an active silence matches is in no notification, firing or resolved;
        while silenced it is neither a change nor resolved. Silenced in a group already
        sent, it is simply left out; when its silence ends while it still fires, it is
        a change (or, its group forgotten meanwhile, a new group).
Rule 7: a silence matches an alert when every matcher matches. A matcher reads a label
        the alert lacks as the empty string (``env=""`` matches an alert without
        ``env``, and so does ``env!~"prod.*"``). Regular expressions match the whole
        value (``=~"part"`` does not match ``partners``), in Python's ``re`` syntax.
Rule 8: validated like Alertmanager's: a silence has 1 to 32 matchers, and at least one
        of them is selective: an ``=`` or ``=~`` that does not match the empty string,
        or a ``!=`` / ``!~`` (which Alertmanager also counts as selective, so that
        ``alertname!="Watchdog"`` is a valid silence). ``ends_at`` is after ``starts_at``;
        ``comment`` and ``created_by`` are required. Every bound violated raises
        ``ValueError`` naming the field and what it expects.
Rule 9: a notification's ``fingerprint`` is a hash of its group and of the labels of its
        firing and resolved alerts: two workers deciding the same notification compute
        the same one. A repeat has the fingerprint of the notification it repeats, so a
        claim of it must expire before ``repeat_interval`` (``group_interval`` suits).

Warning:
    a regular expression runs in Python's backtracking ``re``: a silence's author (who
    holds the admin token) could write one that is slow on long label values. Label
    values here are short (policy, store and breaker names).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, Literal

from surefoot.metrics._alert import Alert, Labels

__all__ = [
    "Dispatcher",
    "Matcher",
    "Notification",
    "Route",
    "Silence",
    "silenced_by",
    "slack_payload",
]

Op = Literal["=", "!=", "=~", "!~"]
OPS: tuple[Op, ...] = ("=", "!=", "=~", "!~")

MAX_NAME = 256
MAX_VALUE = 1024
MAX_MATCHERS = 32
MAX_COMMENT = 1024
MAX_CREATED_BY = 128

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SILENCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SILENCE_KEYS = frozenset(("id", "matchers", "starts_at", "ends_at", "comment", "created_by"))
_MATCHER_KEYS = frozenset(("name", "op", "value"))


def _label_name(field_name: str, name: object) -> str:
    if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ValueError(
            f"{field_name}: expected a label name ([a-zA-Z_][a-zA-Z0-9_]*, at most "
            f"{MAX_NAME} characters), got {name!r:.80}"
        )
    return name


def _seconds(field_name: str, value: object) -> float:
    """A finite number of seconds (an int or a float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field_name}: expected a number of seconds, got {value!r:.80}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{field_name}: expected a finite number, got {value!r:.80}")
    return seconds


def _text(field_name: str, value: object, limit: int) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > limit
        or not value.isprintable()
    ):
        raise ValueError(
            f"{field_name}: expected 1 to {limit} printable characters, not all spaces"
        )
    return value


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label condition: ``name op value``, with ``op`` one of ``=``, ``!=``, ``=~``, ``!~``.

    Example: ``Matcher("policy", "=~", "partner.*")``.

    A label the alert lacks reads as ``""`` (Rule 7); a regular expression must match the
    whole value. Raises ``ValueError`` when a field is out of bounds.
    """

    name: str
    op: Op
    value: str
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _label_name("matcher name", self.name)
        if self.op not in OPS:
            raise ValueError(f"matcher op: expected one of {', '.join(OPS)}, got {self.op!r:.20}")
        if not isinstance(self.value, str) or len(self.value) > MAX_VALUE:
            raise ValueError(f"matcher value: expected a string of at most {MAX_VALUE} characters")
        try:
            self.value.encode()
        except UnicodeEncodeError:
            raise ValueError("matcher value: expected valid Unicode (no lone surrogates)") from None
        if self.op in ("=~", "!~"):
            try:
                pattern = re.compile(self.value)
            except (re.error, OverflowError, RecursionError) as exc:
                raise ValueError(
                    f"matcher value: expected a regular expression, got {self.value!r:.80} ({exc})"
                ) from None
            object.__setattr__(self, "_pattern", pattern)

    def matches_value(self, value: str) -> bool:
        """True when a label holding ``value`` (``""`` when missing) satisfies the matcher."""
        if self._pattern is None:
            return (value == self.value) is (self.op == "=")
        return (self._pattern.fullmatch(value) is not None) is (self.op == "=~")

    def matches(self, labels: Labels) -> bool:
        return self.matches_value(dict(labels).get(self.name, ""))

    @property
    def selective(self) -> bool:
        """False for an ``=`` or ``=~`` that matches the empty string (Rule 8)."""
        return self.op in ("!=", "!~") or not self.matches_value("")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op, "value": self.value}

    @classmethod
    def from_dict(cls, data: object) -> Matcher:
        """A matcher from its ``as_dict()`` form (e.g. a request's JSON), validated."""
        if not isinstance(data, dict) or data.keys() != _MATCHER_KEYS:
            raise ValueError('matcher: expected an object with "name", "op" and "value"')
        return cls(data["name"], data["op"], data["value"])


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes the alerts its matchers all match, from ``starts_at`` until ``ends_at``.

    Example: ``Silence("s1", (Matcher("policy", "=", "partners"),), now, now + 7200,
    "partner migration", "ops@example.com")``.

    Raises ``ValueError`` when a field is out of bounds (Rule 8); ``matchers`` may be given
    as any sequence and is held as a tuple.
    """

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _SILENCE_ID.fullmatch(self.id):
            raise ValueError("id: expected 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
        try:
            matchers = tuple(self.matchers)
        except TypeError:
            raise ValueError("matchers: expected a list of matchers") from None
        if not 1 <= len(matchers) <= MAX_MATCHERS:
            raise ValueError(f"matchers: expected 1 to {MAX_MATCHERS} matchers")
        if not all(isinstance(matcher, Matcher) for matcher in matchers):
            raise ValueError("matchers: expected Matcher values")
        if not any(matcher.selective for matcher in matchers):
            raise ValueError(
                "matchers: expected at least one matcher that does not match the empty "
                'string (as it is, the silence would mute every alert, e.g. env=~".*")'
            )
        starts_at = _seconds("starts_at", self.starts_at)
        ends_at = _seconds("ends_at", self.ends_at)
        if ends_at <= starts_at:
            raise ValueError("ends_at: expected a time after starts_at")
        _text("comment", self.comment, MAX_COMMENT)
        _text("created_by", self.created_by, MAX_CREATED_BY)
        object.__setattr__(self, "matchers", matchers)
        object.__setattr__(self, "starts_at", starts_at)
        object.__setattr__(self, "ends_at", ends_at)

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Labels) -> bool:
        values = dict(labels)
        return all(matcher.matches_value(values.get(matcher.name, "")) for matcher in self.matchers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [matcher.as_dict() for matcher in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_by": self.created_by,
        }

    def encode(self) -> bytes:
        """Compact JSON (UTF-8) of ``as_dict()``, for the shared board."""
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Silence:
        """The silence ``encode()`` wrote; ``ValueError`` on anything malformed.

        Unknown keys are refused too: a silence this version cannot read whole is not
        applied (its alerts notify) rather than applied in part.
        """
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise ValueError("silence: expected JSON") from None
        if not isinstance(obj, dict) or obj.keys() != _SILENCE_KEYS:
            raise ValueError(f"silence: expected an object with {', '.join(sorted(_SILENCE_KEYS))}")
        if not isinstance(obj["matchers"], list):
            raise ValueError("matchers: expected a list of matchers")
        return cls(
            obj["id"],
            tuple(Matcher.from_dict(matcher) for matcher in obj["matchers"]),
            obj["starts_at"],
            obj["ends_at"],
            obj["comment"],
            obj["created_by"],
        )


def silenced_by(alert: Alert, silences: Iterable[Silence], now: float) -> tuple[str, ...]:
    """The ids (sorted) of the silences active at ``now`` that match ``alert``."""
    return tuple(
        sorted(
            silence.id
            for silence in silences
            if silence.active(now) and silence.matches(alert.labels)
        )
    )


@dataclass(frozen=True, slots=True)
class Route:
    """How alerts are grouped and when a group is sent (Rules 2 to 5), in seconds.

    The defaults are Alertmanager's (``group_by`` aside: it groups by alert name).
    """

    group_by: tuple[str, ...] = ("alertname",)
    group_wait: float = 30
    group_interval: float = 300
    repeat_interval: float = 14400
    send_resolved: bool = True

    def __post_init__(self) -> None:
        names = tuple(self.group_by)
        for name in names:
            _label_name("group_by", name)
        if len(set(names)) != len(names):
            raise ValueError("group_by: expected distinct label names")
        group_wait = _seconds("group_wait", self.group_wait)
        group_interval = _seconds("group_interval", self.group_interval)
        repeat_interval = _seconds("repeat_interval", self.repeat_interval)
        if group_wait < 0:
            raise ValueError("group_wait: expected 0 or more seconds")
        if group_interval <= 0:
            raise ValueError("group_interval: expected more than 0 seconds")
        if repeat_interval < group_interval:
            raise ValueError("repeat_interval: expected at least group_interval")
        object.__setattr__(self, "group_by", names)

    def group_of(self, labels: Labels) -> Labels:
        """The group labels of an alert: its ``group_by`` labels that it has (not empty)."""
        values = dict(labels)
        return tuple(sorted((name, values[name]) for name in self.group_by if values.get(name)))


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for one group: its firing alerts and the alerts resolved since the last.

    ``firing`` and ``resolved`` are sorted by labels; ``fingerprint`` (Rule 9) is a hex
    SHA-256, a valid board slot name.
    """

    group_key: str
    group_labels: Labels
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    fingerprint: str


def _group_key(group_labels: Labels) -> str:
    """``{alertname="X",policy="partners"}``, values escaped as Prometheus does."""
    return "{" + ",".join(f'{name}="{_quoted(value)}"' for name, value in group_labels) + "}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _notification(
    group_labels: Labels, firing: Iterable[Alert], resolved: Iterable[Alert]
) -> Notification:
    firing_alerts = tuple(sorted(firing, key=lambda alert: alert.labels))
    resolved_alerts = tuple(sorted(resolved, key=lambda alert: alert.labels))
    key = _group_key(group_labels)
    content = json.dumps(
        [
            key,
            [alert.labels for alert in firing_alerts],
            [alert.labels for alert in resolved_alerts],
        ]
    )
    fingerprint = hashlib.sha256(content.encode()).hexdigest()
    return Notification(key, group_labels, firing_alerts, resolved_alerts, fingerprint)


@dataclass(slots=True)
class _Group:
    made_at: float
    last_sent: float | None = None
    sent: dict[Labels, Alert] = field(default_factory=dict)  # the last notification's firing


class Dispatcher:
    """Turns the alerts of each evaluation into notifications (Rules 1 to 6).

    Example::

        dispatcher = Dispatcher(Route(group_wait=30))
        for notification in dispatcher.step(alerts, silences, now):
            ...  # claim notification.fingerprint in the board, then send it

    ``step`` is called with every alert of the evaluation (all of them, each time) and
    ``now`` never going back.
    """

    def __init__(self, route: Route) -> None:
        self.route = route
        self._groups: dict[Labels, _Group] = {}

    def step(
        self, alerts: Sequence[Alert], silences: Sequence[Silence], now: float
    ) -> list[Notification]:
        """The notifications due at ``now``, sorted by group key."""
        live = [silence for silence in silences if silence.active(now)]
        firing_labels: set[Labels] = set()
        firing: dict[Labels, dict[Labels, Alert]] = {}
        for alert in alerts:
            if alert.state != "firing":
                continue
            firing_labels.add(alert.labels)
            if not any(silence.matches(alert.labels) for silence in live):
                group_labels = self.route.group_of(alert.labels)
                firing.setdefault(group_labels, {})[alert.labels] = alert
        for group_labels in firing.keys() - self._groups.keys():
            self._groups[group_labels] = _Group(made_at=now)
        notifications = []
        for group_labels in sorted(self._groups):
            group = self._groups[group_labels]
            now_firing = firing.get(group_labels, {})
            resolved = [
                alert
                for labels, alert in group.sent.items()
                if labels not in firing_labels
                and self.route.send_resolved
                and not any(silence.matches(labels) for silence in live)
            ]
            notification = self._flush(group_labels, group, now_firing, resolved, now)
            if notification is not None:
                notifications.append(notification)
        return sorted(notifications, key=lambda notification: notification.group_key)

    def _flush(
        self,
        group_labels: Labels,
        group: _Group,
        firing: Mapping[Labels, Alert],
        resolved: list[Alert],
        now: float,
    ) -> Notification | None:
        last = group.last_sent
        if last is None:
            if now < group.made_at + self.route.group_wait:
                return None
        elif now < last + self.route.group_interval:
            return None
        if not firing:
            del self._groups[group_labels]
            return _notification(group_labels, (), resolved) if resolved else None
        unchanged = not resolved and firing.keys() <= group.sent.keys()
        if last is not None and unchanged and now < last + self.route.repeat_interval:
            return None
        group.last_sent = now
        group.sent = dict(firing)
        return _notification(group_labels, firing.values(), resolved)


# Slack's limits (https://api.slack.com/reference/block-kit/blocks): 50 blocks, a header
# of 150 characters, a section's text of 3,000 (``_alert_text`` stays under it).
MAX_BLOCKS = 50
HEADER_LIMIT = 150
_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_RUNBOOK_URL = re.compile(r"https?://[^\s<>|]+")


def slack_payload(notification: Notification, *, source: str) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` and ``blocks``) for ``notification``.

    A header, a context line (``source`` and the group), then one section per alert:
    firing ones first, then the resolved ones, marked so. Past Slack's 50 blocks, the
    last one says how many alerts were left out. Every text is one line per field,
    escaped for Slack's mrkdwn and clipped, so no block exceeds Slack's limits.
    """
    title = _title(notification)
    alerts = [(alert, False) for alert in notification.firing]
    alerts += [(alert, True) for alert in notification.resolved]
    room = MAX_BLOCKS - 2
    shown = alerts if len(alerts) <= room else alerts[: room - 1]
    context = f"{source} · group {notification.group_key}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(title, HEADER_LIMIT)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(context, 1000)}]},
    ]
    blocks += [_section(_alert_text(alert, resolved)) for alert, resolved in shown]
    if len(shown) < len(alerts):
        blocks.append(_section(f"_... and {len(alerts) - len(shown)} more_"))
    return {"text": _mrkdwn(title, 1000), "blocks": blocks}


def _title(notification: Notification) -> str:
    """``[FIRING:2] SurefootRateLimitRefusalsSpike (policy=partners)``."""
    if notification.firing:
        state, count = "FIRING", len(notification.firing)
    else:
        state, count = "RESOLVED", len(notification.resolved)
    group = dict(notification.group_labels)
    name = group.pop("alertname", None) or ", ".join(
        sorted({_alertname(alert) for alert in notification.firing + notification.resolved})
    )
    others = ", ".join(f"{key}={value}" for key, value in group.items())
    return _one_line(f"[{state}:{count}] {name}" + (f" ({others})" if others else ""))


def _alertname(alert: Alert) -> str:
    return dict(alert.labels).get("alertname", "")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _alert_text(alert: Alert, resolved: bool) -> str:
    """At most about 2,700 characters: each field is clipped on its own."""
    labels = dict(alert.labels)
    annotations = dict(alert.annotations)
    mark = ":white_check_mark: *RESOLVED*" if resolved else ":rotating_light: *FIRING*"
    summary = annotations.get("summary") or _alertname(alert)
    lines = [
        f"{mark} · *{_mrkdwn(summary, 600)}*",
        f"*{_mrkdwn(_alertname(alert), 200)}*"
        f" · severity: *{_mrkdwn(labels.get('severity', ''), 100)}*"
        f" · since: {_iso(alert.active_since)} · value: {alert.value:.6g}",
    ]
    rest = [f"{key}={value}" for key, value in alert.labels if key not in ("alertname", "severity")]
    if rest:
        lines.append("labels: " + _mrkdwn(", ".join(rest), 600))
    url = annotations.get("runbook_url", "")
    link = _mrkdwn(url, 1000)
    if _RUNBOOK_URL.fullmatch(url) and url.isprintable() and not link.endswith("…"):
        lines.append(f"<{link}|runbook>")
    elif url:
        lines.append(f"runbook: {_mrkdwn(url, 300)}")
    return "\n".join(lines)


def _iso(when: float) -> str:
    """ISO-8601 in UTC, to the second (``2026-12-06T20:05:24Z``)."""
    try:
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{when:g}"


def _one_line(text: str) -> str:
    return "".join(char if char.isprintable() else " " for char in text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str, limit: int) -> str:
    """``text`` on one line, escaped for mrkdwn, at most ``limit`` characters (an escape is
    never cut in two)."""
    pieces = [_MRKDWN_ESCAPES.get(char, char) for char in _one_line(text)]
    ends = list(accumulate(len(piece) for piece in pieces))
    if not ends or ends[-1] <= limit:
        return "".join(pieces)
    return "".join(pieces[: bisect_right(ends, limit - 1)]) + "…"
