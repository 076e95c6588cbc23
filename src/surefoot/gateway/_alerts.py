"""Prometheus alerting rules built from the policy file (``surefoot alerts --prometheus``).

The rules read the metrics the gateway exports (``docs/metrics.md``) and follow the
policy file: one refusal rule per rate-limit policy, and the saga and outbox rules only
when ``[sagas]`` and ``[webhooks.send]`` are there. Thresholds come from ``[alerts]``.

Rule 1: trends, not single events. A spike rule compares a rate over ``window`` with the
        same series' own mean over ``baseline`` (a subquery), and fires only above a
        floor of events per second, so a quiet series does not page on three events;
        every rule holds its condition for a ``for:`` duration before it fires.
Rule 2: every rule has a ``severity`` label (``critical`` where money or data may be at
        stake: outcomes unknown, a store failing; ``warning`` otherwise), a summary, a
        description and a ``runbook_url`` to its section of ``docs/observability.md``
        (the anchor is the rule's name in lower case).
Rule 3: the output is a Prometheus rules file; ``promtool check rules`` and ``promtool
        test rules`` accept it (the tests run both).
Rule 4: one rule, two evaluators. Each rule is a condition of ``surefoot.metrics``
        (``Spike``, ``RateAbove``, ``GaugeAbove``, ``Ratio``): its ``expr`` is the
        condition's PromQL, and ``rule_specs`` gives the same rules to the gateway's own
        evaluation (``Evaluator``), which fires on the same trends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from surefoot.gateway._config import GatewayConfig
from surefoot.metrics import (
    Condition,
    CountsAbove,
    GaugeAbove,
    LabelMatcher,
    RateAbove,
    Ratio,
    RuleSpec,
    Spike,
    promql_duration,
)

__all__ = ["AlertRule", "alert_rules", "rule_specs", "rules_yaml"]

GROUP = "surefoot"


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alerting rule: its condition, held ``hold`` seconds (Prometheus's ``for:``)."""

    alert: str
    condition: Condition
    hold: float
    severity: str
    summary: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def expr(self) -> str:
        """The condition in PromQL."""
        return self.condition.promql()

    @property
    def duration(self) -> str:
        """The ``for:`` of the rule, a Prometheus duration."""
        return promql_duration(self.hold)

    def spec(self, runbook_base: str) -> RuleSpec:
        """The rule for the gateway's own evaluation (``surefoot.metrics``'s ``Evaluator``)."""
        return RuleSpec(
            self.alert,
            self.condition,
            self.hold,
            self.severity,
            self.summary,
            self.description,
            self.labels,
            _runbook(runbook_base, self.alert),
        )

    def as_dict(self, runbook_base: str) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.duration,
            "labels": {"severity": self.severity, **dict(self.labels)},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": _runbook(runbook_base, self.alert),
            },
        }


def _runbook(base: str, alert: str) -> str:
    return f"{base}#{alert.lower()}"


def _spike(metric: str, match: tuple[LabelMatcher, ...], by: str, settings: Any) -> Spike:
    """``metric``'s rate over the window, above ``spike_factor`` times its own mean over
    the baseline and above the floor (Rule 1)."""
    return Spike(
        metric,
        match,
        (by,) if by else (),
        settings.window,
        settings.baseline,
        settings.spike_factor,
        settings.min_rate,
    )


def _rules(config: GatewayConfig) -> Iterator[AlertRule]:
    root = config.root
    settings = root.alerts
    for policy in root.rate_limit.policies:
        match = (LabelMatcher("policy", "=", policy.name), LabelMatcher("outcome", "=", "rejected"))
        yield AlertRule(
            "SurefootRateLimitRefusalsSpike",
            _spike("surefoot_ratelimit_decisions_total", match, "policy", settings),
            settings.hold,
            "warning",
            f"Rate limit {policy.name!r} refuses {settings.spike_factor:g}x its usual rate",
            "Requests refused by the policy {{ $labels.policy }}: {{ $value | humanize }}/s, "
            f"more than {settings.spike_factor:g} times its mean over the last "
            f"{promql_duration(settings.baseline)}.",
            (("policy", policy.name),),
        )
    if root.top.enabled and root.rate_limit.policies:
        # Per client, from the top offenders: its refusals over the last 5 minutes against
        # its own over the day (both counted by the gateway: surefoot_top_requests).
        yield AlertRule(
            "SurefootClientRefusalsSpike",
            CountsAbove(
                "surefoot_top_requests",
                (LabelMatcher("list", "=", "refused"),),
                ("policy", "item", "client"),
                LabelMatcher("window", "=", "5m"),
                LabelMatcher("window", "=", "24h"),
                300.0,
                86400.0,
                settings.spike_factor,
                settings.min_rate,
            ),
            settings.hold,
            "warning",
            "Client {{ $labels.client }} refused "
            f"{settings.spike_factor:g}x its usual rate by {{{{ $labels.policy }}}}",
            "Requests of {{ $labels.client }} refused by the policy {{ $labels.policy }}: "
            "{{ $value | humanize }}/s over the last 5 minutes, more than "
            f"{settings.spike_factor:g} times its own rate over the last day.",
        )
    yield AlertRule(
        "SurefootDuplicateKeysSpike",
        _spike("surefoot_idempotency_replays_total", (), "", settings),
        settings.hold,
        "warning",
        "Requests repeating an idempotency key: far above the usual rate",
        "Duplicates answered from stored responses: {{ $value | humanize }}/s, more than "
        f"{settings.spike_factor:g} times the mean over the last "
        f"{promql_duration(settings.baseline)}.",
    )
    yield AlertRule(
        "SurefootKeysReusedSpike",
        _spike("surefoot_idempotency_mismatches_total", (), "", settings),
        settings.hold,
        "warning",
        "Idempotency keys reused with a different request: far above the usual rate",
        "Keys reused with another body, path or method (answered 422): {{ $value | humanize }}/s.",
    )
    yield AlertRule(
        "SurefootOutcomesUnknown",
        GaugeAbove("surefoot_idempotency_unknown_keys", (), (), 0),
        settings.unknown_for,
        "critical",
        "Idempotency keys have stayed of unknown outcome",
        "{{ $value }} keys have had an unknown outcome (the upstream may or may not have done "
        f"the work) for {promql_duration(settings.unknown_for)} or more.",
    )
    yield AlertRule(
        "SurefootBreakerOpen",
        GaugeAbove(
            "surefoot_breaker_state",
            (LabelMatcher("state", "=~", "open|forced_open"),),
            ("breaker",),
            0,
        ),
        settings.breaker_open_for,
        "warning",
        "Circuit breaker {{ $labels.breaker }} is open",
        "Calls through {{ $labels.breaker }} have been refused without being sent for "
        f"{promql_duration(settings.breaker_open_for)}.",
    )
    # One failed call keeps the rate above 0 for a whole window: held for the window
    # plus store_failing_for, the rule fires only when errors have gone on for
    # store_failing_for, never on a single error (Rule 1).
    yield AlertRule(
        "SurefootStoreFailing",
        RateAbove("surefoot_store_errors_total", (), ("store",), settings.window, 0),
        settings.window + settings.store_failing_for,
        "critical",
        "Store {{ $labels.store }} is failing",
        "Operations on the store {{ $labels.store }} have failed for "
        f"{promql_duration(settings.store_failing_for)}: {{{{ $value | humanize }}}} errors/s.",
    )
    yield AlertRule(
        "SurefootLoadShedding",
        Ratio(
            "surefoot_shed_total",
            "surefoot_http_requests_total",
            settings.window,
            settings.shed_ratio,
        ),
        settings.hold,
        "warning",
        "The gateway sheds requests at the upstream's concurrency limit",
        "{{ $value | humanizePercentage }} of the requests are refused with 503 "
        f"(more than {settings.shed_ratio:.0%}).",
    )
    if root.sagas is not None:
        yield AlertRule(
            "SurefootSagasNeedAttention",
            GaugeAbove(
                "surefoot_sagas",
                (LabelMatcher("state", "=", "needs_attention"),),
                ("saga",),
                0,
                aggregate="sum",
            ),
            settings.saga_attention_for,
            "warning",
            "Sagas {{ $labels.saga }} wait for a person",
            "{{ $value }} sagas have stopped where only a person can settle them "
            "(surefoot sagas list --state needs_attention).",
        )
    if root.webhooks.send is not None:
        yield AlertRule(
            "SurefootWebhooksBacklog",
            GaugeAbove(
                "surefoot_webhooks_oldest_undelivered_seconds",
                (),
                ("endpoint",),
                settings.webhook_backlog_age,
            ),
            settings.hold,
            "warning",
            "Webhooks to {{ $labels.endpoint }} wait undelivered",
            "The oldest message to {{ $labels.endpoint }} has waited "
            "{{ $value | humanizeDuration }}.",
        )


def alert_rules(config: GatewayConfig) -> list[AlertRule]:
    """The rules for ``config`` (Rules 1 and 2)."""
    return list(_rules(config))


def rule_specs(config: GatewayConfig) -> list[RuleSpec]:
    """The same rules for the gateway's own evaluation, each with its runbook URL."""
    base = config.root.alerts.runbook_base
    return [rule.spec(base) for rule in alert_rules(config)]


def rules_yaml(config: GatewayConfig) -> str:
    """A Prometheus rules file for ``config``: one group ``surefoot``, YAML with every
    string JSON-quoted (a valid YAML scalar), so nothing in a name can break it."""
    base = config.root.alerts.runbook_base
    lines = [
        f"# Written by `surefoot alerts --prometheus` from {config.source}.",
        "# Runbooks: docs/observability.md. Check with: promtool check rules FILE",
        "groups:",
        f"  - name: {json.dumps(GROUP)}",
        "    rules:",
    ]
    for rule in alert_rules(config):
        data = rule.as_dict(base)
        lines.append(f"      - alert: {json.dumps(data['alert'])}")
        lines.append(f"        expr: {json.dumps(data['expr'])}")
        lines.append(f"        for: {json.dumps(data['for'])}")
        for mapping in ("labels", "annotations"):
            lines.append(f"        {mapping}:")
            for key, value in data[mapping].items():
                lines.append(f"          {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
