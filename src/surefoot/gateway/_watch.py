"""``AlertWatcher``: the gateway's own evaluation of its alert rules, its notifications,
silences, and the history the dashboard draws.

Every ``[alerts] evaluate_every`` seconds each worker samples the gateway's metrics (with
several workers, their sum, as ``/metrics`` shows it) into a history (``Samples``),
evaluates the rules ``surefoot alerts --prometheus`` writes for Prometheus
(``rule_specs``: the same conditions, evaluated here), and hands the alerts to an
Alertmanager-like ``Dispatcher``.

Rule 1: the history keeps what the rules and the dashboard read, summed over the labels
        neither needs (``KEPT``), so its size depends on the policies, stores and breakers
        of the file, never on routes or clients (the top lists, whose series are
        clients, are kept for their latest values only: ``LATEST``). It spans a day, or
        the rules' baseline if longer, in at most ``SNAPSHOTS`` snapshots: evaluated
        more often than every 15 seconds, it spans less, and a spike's baseline is the
        history there is.
Rule 2: silences live in the board ``silences`` of ``[alerts]``' store, one slot each,
        so every worker and host applies the same ones. An expired silence stays listed
        for a day (``KEEP_EXPIRED``). A store that cannot be read leaves the last
        silences read in force. A silence lasts at most a year, and starts within a
        year of now.
Rule 3: every worker evaluates the same rules on the same values, so each decides the
        same notifications: a notification is sent by the worker that claims its
        fingerprint in the board ``alerts:sent`` first; the claim expires after
        ``group_interval``. What was sent is logged in the board ``alerts:log`` (per
        group: the fingerprint and when, for ``repeat_interval``), so a worker that starts
        while a group fires, whose dispatcher sees the group as new, does not send what
        another worker sent before it started, less than ``repeat_interval`` ago (a
        worker running then saw the group: a group that fires again after it resolved
        is sent). A notification that cannot be sent is logged, not logged as sent; its
        group is sent again at its next change or repeat.
Rule 4: without ``webhook_url`` nothing is sent: the alerts are listed in the admin API
        and the dashboard only. With ``evaluate = false`` the rules are not evaluated
        (the history is still kept for the dashboard).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx

from surefoot.clock import Clock
from surefoot.gateway._alerts import rule_specs
from surefoot.gateway._config import GatewayConfig
from surefoot.gateway._metrics import GatewayMetrics
from surefoot.metrics import (
    Alert,
    BoardStore,
    Dispatcher,
    Evaluator,
    Matcher,
    Route,
    RuleSpec,
    Samples,
    Series,
    Silence,
    silenced_by,
    slack_payload,
)

__all__ = ["KEPT", "AlertWatcher", "Silences", "charts", "parse_matcher"]

_log = logging.getLogger("surefoot.gateway")

#: The sampled metrics and the labels kept of each (Rule 1).
KEPT: dict[str, tuple[str, ...]] = {
    "surefoot_http_requests_total": ("status",),
    "surefoot_ratelimit_decisions_total": ("policy", "outcome"),
    "surefoot_idempotency_replays_total": (),
    "surefoot_idempotency_mismatches_total": (),
    "surefoot_idempotency_conflicts_total": (),
    "surefoot_idempotency_unknown_keys": (),
    "surefoot_shed_total": ("priority",),
    "surefoot_breaker_state": ("breaker", "state"),
    "surefoot_store_errors_total": ("store",),
    "surefoot_store_operation_duration_seconds_bucket": ("store", "le"),
    "surefoot_webhooks_oldest_undelivered_seconds": ("endpoint",),
    "surefoot_sagas": ("saga", "state"),
    "surefoot_top_requests": ("list", "policy", "item", "client", "window"),
}
#: Sampled, but kept for the latest value only: a series per client (Rule 1).
LATEST = frozenset({"surefoot_top_requests"})
SILENCES = "silences"
SENT = "alerts:sent"
SENT_LOG = "alerts:log"
#: The longest silence, and how far from now it may start (Rule 2).
MAX_SILENCE = 365 * 86400.0
#: How long an expired silence stays listed (Rule 2).
KEEP_EXPIRED = 86400.0
#: The history: long enough for the dashboard's longest range and the rules' baseline, in
#: at most ``SNAPSHOTS`` snapshots (Rule 1).
HISTORY = 86400.0
SNAPSHOTS = 5760
_TIMEOUT = 10.0


class AlertWatcher:
    """Samples, evaluates, notifies; holds the silences.

    Args:
        metrics: the gateway's metrics, sampled.
        board: the store of ``[alerts]`` (silences, claims of notifications).
        config: the policy file (its rules and ``[alerts]``).
        clock: the time of samples, alerts and silences.
        transport: for tests: the transport of the webhook's client.
        refresh: awaited before each sample (the gateway reads the top lists into the
            metrics then, for ``SurefootClientRefusalsSpike``).
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        board: BoardStore,
        config: GatewayConfig,
        *,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.refresh = refresh
        self.board = board
        self.clock = clock
        settings = config.root.alerts
        wanted = max(HISTORY, settings.baseline + settings.window)
        self.samples = Samples(retention=min(wanted, SNAPSHOTS * settings.evaluate_every))
        self.evaluator = Evaluator()
        # The top lists change clients all the time: only their latest values are kept.
        self.latest = Samples(retention=2 * settings.evaluate_every)
        self.evaluator_latest = Evaluator()
        self.dispatcher = Dispatcher(
            Route(
                group_by=tuple(settings.group_by),
                group_wait=settings.group_wait,
                group_interval=settings.group_interval,
                repeat_interval=settings.repeat_interval,
                send_resolved=settings.send_resolved,
            )
        )
        self.group_interval = settings.group_interval
        self.repeat_interval = settings.repeat_interval
        self.evaluate = settings.evaluate
        self.webhook = config.alert_webhook
        self.source = socket.gethostname()
        self.rules, self.rules_latest = _split(rule_specs(config))
        self.every = settings.evaluate_every
        self.started = clock.now()
        self.sampled_at: float | None = None
        self._charts: dict[str, tuple[float | None, dict[str, Any]]] = {}
        self.alerts: list[Alert] = []
        self.board_silences = Silences(board)
        self.silences: list[Silence] = []
        self._transport = transport
        self._client: httpx.AsyncClient | None = None  # made at the first notification

    def reconfigure(self, config: GatewayConfig) -> None:
        """The rules of a reloaded file (their thresholds and policies); the rest of
        ``[alerts]`` is read once, like ``[server]``."""
        self.rules, self.rules_latest = _split(rule_specs(config))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, every: float) -> None:
        """``step`` every ``every`` seconds until cancelled; a step that fails is logged."""
        while True:
            try:
                await self.step()
            except Exception:  # pragma: no cover - step's parts report their own failures
                _log.warning("alert evaluation failed; retrying later", exc_info=True)
            await asyncio.sleep(every)

    async def step(self) -> None:
        """Sample, evaluate, notify (Rules 1, 3 and 4)."""
        if self.refresh is not None:
            await self.refresh()
        values = await asyncio.to_thread(self.sample)
        now = self.clock.now()
        latest = {series: values.pop(series) for series in list(values) if series[0] in LATEST}
        self.samples.add(now, values)
        self.latest.add(now, latest)
        self.sampled_at = now
        if not self.evaluate:
            return
        self.alerts = [
            *self.evaluator.evaluate(self.rules, self.samples, now),
            *self.evaluator_latest.evaluate(self.rules_latest, self.latest, now),
        ]
        silences = await self.read_silences()
        notifications = self.dispatcher.step(self.alerts, silences, now)
        if self.webhook is None or not notifications:
            return
        try:
            sent = await self.board.board_read(SENT_LOG, now)
            for notification in notifications:
                group = hashlib.sha256(notification.group_key.encode()).hexdigest()
                fingerprint, _, at = sent.get(group, b"").decode(errors="replace").partition(" ")
                if fingerprint == notification.fingerprint and _before(at, self.started):
                    # Sent before this worker started, less than repeat_interval ago: a
                    # worker that ran meanwhile saw the group, this one sees it as new.
                    continue
                if await self.board.board_claim(
                    SENT, notification.fingerprint, b"1", now + self.group_interval, now
                ) and await self._post(slack_payload(notification, source=self.source)):
                    await self.board.board_put(
                        SENT_LOG,
                        group,
                        f"{notification.fingerprint} {now!r}".encode(),
                        now + self.repeat_interval,
                        now,
                    )
        except Exception as exc:
            _log.warning("alert notifications not sent (store: %s)", type(exc).__name__)

    def sample(self) -> dict[Series, float]:
        """The metrics now, summed over the labels ``KEPT`` leaves out (Rule 1)."""
        values: dict[Series, float] = {}
        for family in self.metrics.collect():
            for sample in family.samples:
                kept = KEPT.get(sample.name)
                if kept is None:
                    continue
                labels = tuple((name, sample.labels.get(name, "")) for name in kept)
                series = (sample.name, labels)
                values[series] = values.get(series, 0.0) + sample.value
        return values

    async def _post(self, payload: dict[str, Any]) -> bool:
        """Send one notification; whether the webhook took it."""
        assert self.webhook is not None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=_TIMEOUT, transport=self._transport)
        try:
            response = await self._client.post(self.webhook, json=payload)
        except httpx.HTTPError as exc:
            _log.warning("alert notification failed: %s", type(exc).__name__)
            return False
        if response.status_code >= 300:
            _log.warning(
                "alert notification refused: the webhook answered %d", response.status_code
            )
            return False
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # -- alerts and silences -------------------------------------------------------------------

    def charts(self, span: str) -> dict[str, Any]:
        """The dashboard's series over ``span`` (a key of ``RANGES``), up to the last
        sample: computed once per sample, however many pages ask."""
        cached = self._charts.get(span)
        if cached is None or cached[0] != self.sampled_at:
            now = self.sampled_at if self.sampled_at is not None else self.clock.now()
            cached = self._charts[span] = (
                self.sampled_at,
                charts(self.samples, RANGES[span], now, self.every),
            )
        return cached[1]

    def listed(self) -> list[dict[str, Any]]:
        """The alerts of the last evaluation, each with the silences muting it."""
        now = self.clock.now()
        out = []
        for alert in self.alerts:
            annotations = dict(alert.annotations)
            out.append(
                {
                    "alertname": alert.name,
                    "labels": dict(alert.labels),
                    "state": alert.state,
                    "since": alert.active_since,
                    "value": alert.value,
                    "summary": annotations.get("summary", ""),
                    "description": annotations.get("description", ""),
                    "runbook_url": annotations.get("runbook_url", ""),
                    "silenced_by": list(silenced_by(alert, self.silences, now)),
                }
            )
        return out

    async def read_silences(self) -> list[Silence]:
        """Every silence in the board, active or not; the last ones read when the store
        fails (Rule 2)."""
        try:
            self.silences = await self.board_silences.read(self.clock.now())
        except Exception as exc:
            _log.warning("silences not read (store: %s); the last ones stay", type(exc).__name__)
        return self.silences


class Silences:
    """The silences of a board (Rule 2): what the admin API, the CLI and every worker's
    ``AlertWatcher`` read and write."""

    def __init__(self, board: BoardStore) -> None:
        self.board = board

    async def read(self, now: float) -> list[Silence]:
        """Every silence, active, pending or expired (for a day), oldest first."""
        slots = await self.board.board_read(SILENCES, now)
        return sorted(_decoded(slots.values()), key=lambda s: (s.starts_at, s.id))

    async def add(
        self,
        matchers: Iterable[Matcher],
        *,
        now: float,
        ends_at: float,
        comment: str,
        created_by: str,
        starts_at: float | None = None,
    ) -> Silence:
        """A new silence; ``ValueError`` naming the field when one is wrong (Rule 2)."""
        starts_at = now if starts_at is None else starts_at
        if not now - MAX_SILENCE <= starts_at <= now + MAX_SILENCE:
            raise ValueError("starts_at: expected a time within a year of now")
        if ends_at - starts_at > MAX_SILENCE:
            raise ValueError("ends_at: expected at most a year after starts_at")
        silence = Silence(
            uuid.uuid4().hex,
            tuple(matchers),
            starts_at,
            ends_at,
            comment,
            created_by,
        )
        await self.board.board_put(
            SILENCES, silence.id, silence.encode(), silence.ends_at + KEEP_EXPIRED, now
        )
        return silence

    async def expire(self, silence_id: str, now: float) -> Silence | None:
        """End a silence now (None: no such silence); one not started yet is removed."""
        found = {silence.id: silence for silence in await self.read(now)}
        silence = found.get(silence_id)
        if silence is None:
            return None
        if silence.starts_at >= now:
            await self.board.board_delete(SILENCES, silence_id, now)
        elif silence.ends_at > now:
            silence = dataclasses.replace(silence, ends_at=now)
            await self.board.board_put(
                SILENCES, silence.id, silence.encode(), now + KEEP_EXPIRED, now
            )
        return silence


def parse_matcher(text: str) -> Matcher:
    """``name=value``, ``name!=value``, ``name=~regex`` or ``name!~regex`` as a matcher;
    ``ValueError`` when it is none of them."""
    found = _MATCHER.fullmatch(text)
    if found is None:
        raise ValueError(
            f"expected name=value, name!=value, name=~regex or name!~regex, got {text!r:.80}"
        )
    name, op, value = found.groups()
    return Matcher(name, op, value)  # type: ignore[arg-type] # one of the four by the pattern


_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)(=~|!~|!=|=)(.*)", re.DOTALL)


def _before(text: str, moment: float) -> bool:
    """Whether ``text`` is a time before ``moment`` (False when it is no time)."""
    try:
        return float(text) < moment
    except ValueError:
        return False


def _split(rules: list[RuleSpec]) -> tuple[list[RuleSpec], list[RuleSpec]]:
    """The rules that read the history, and those that read only ``LATEST`` metrics."""
    history = [rule for rule in rules if not set(rule.condition.metrics) <= LATEST]
    return history, [rule for rule in rules if set(rule.condition.metrics) <= LATEST]


def _decoded(values: Iterable[bytes]) -> Iterable[Silence]:
    for value in values:
        try:
            yield Silence.decode(value)
        except ValueError as exc:
            _log.warning("a silence in the store is unreadable: %s", exc)


#: The dashboard's ranges, in seconds.
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
#: Points per chart at most.
POINTS = 180
_BREAKER = {"closed": 0.0, "half_open": 1.0, "open": 2.0, "forced_open": 2.0}
_Chart = dict[str, list[float | None]]


def charts(samples: Samples, seconds: float, now: float, every: float) -> dict[str, Any]:
    """The dashboard's series over the last ``seconds``: per step, each counter's rate
    (per second) and each gauge's last value; ``None`` where nothing was sampled.

    ``every`` is the sampling interval: a step is never shorter.
    """
    step = max(every, seconds / POINTS)
    times = [now - seconds + step * (i + 1) for i in range(int(seconds // step))]
    snapshots = samples.snapshots(now - seconds - step, now)
    groups: dict[str, _Chart] = {
        name: {}
        for name in (
            "requests",
            "refusals",
            "replays",
            "unknown",
            "shed",
            "breakers",
            "store_latency",
            "store_errors",
            "webhooks",
            "sagas",
        )
    }
    at = 0
    previous: dict[Series, float] | None = None
    for index, end in enumerate(times):
        # The last snapshot of the step, and the counters' increase since the step before.
        increase: dict[Series, float] = {}
        last: dict[Series, float] | None = None
        while at < len(snapshots) and snapshots[at][0] <= end:
            values = dict(snapshots[at][1])
            if previous is not None:
                for series, value in values.items():
                    before = previous.get(series)
                    delta = value if before is None or value < before else value - before
                    increase[series] = increase.get(series, 0.0) + delta
            previous = last = values
            at += 1
        if last is None:
            continue
        _point(groups, index, len(times), increase, last, step)
    return {"now": now, "step": step, "times": times, "series": groups}


def _point(
    groups: dict[str, _Chart],
    index: int,
    size: int,
    increase: dict[Series, float],
    last: dict[Series, float],
    step: float,
) -> None:
    """Write one step's values into ``groups``."""

    def put(group: str, label: str, value: float, combine: Any = float.__add__) -> None:
        line = groups[group].get(label)
        if line is None:
            line = groups[group][label] = [None] * size
        line[index] = value if line[index] is None else combine(line[index], value)

    buckets: dict[str, list[tuple[float, float]]] = {}
    for (name, labels), value in increase.items():
        label = dict(labels)
        rate = value / step
        if name == "surefoot_http_requests_total":
            put("requests", label["status"][:1] + "xx", rate)
        elif name == "surefoot_ratelimit_decisions_total" and label["outcome"] == "rejected":
            put("refusals", label["policy"], rate)
        elif name == "surefoot_idempotency_replays_total":
            put("replays", "replayed", rate)
        elif name == "surefoot_idempotency_mismatches_total":
            put("replays", "mismatched", rate)
        elif name == "surefoot_idempotency_conflicts_total":
            put("replays", "in progress", rate)
        elif name == "surefoot_shed_total":
            put("shed", label["priority"], rate)
        elif name == "surefoot_store_errors_total":
            put("store_errors", label["store"], rate)
        elif name == "surefoot_store_operation_duration_seconds_bucket":
            buckets.setdefault(label["store"], []).append((float(label["le"]), value))
    for store, counts in buckets.items():
        p99 = _quantile(0.99, counts)
        if p99 is not None:
            put("store_latency", store, p99)
    for (name, labels), value in last.items():
        label = dict(labels)
        if name == "surefoot_idempotency_unknown_keys":
            put("unknown", "keys", value)
        elif name == "surefoot_breaker_state" and value > 0:
            # Workers may disagree for a moment: the worst state shows.
            put("breakers", label["breaker"], _BREAKER.get(label["state"], 0.0), max)
        elif name == "surefoot_webhooks_oldest_undelivered_seconds":
            put("webhooks", label["endpoint"], value)
        elif name == "surefoot_sagas" and label["state"] == "needs_attention":
            put("sagas", label["saga"], value)


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` of cumulative ``(le, count)`` buckets, as Prometheus
    computes it (linear within the bucket); None when the buckets counted nothing."""
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower  # pragma: no cover - the +Inf bucket holds the total
