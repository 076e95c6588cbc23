"""The metric table: every Prometheus metric surefoot exposes, written once.

``PrometheusMetrics`` creates its metrics from this table (name, type, labels, help,
buckets, multiprocess mode) and ``metrics_markdown`` prints it as the table of
``docs/metrics.md``, so the code and the docs cannot disagree (a test compares them).
Nothing here imports prometheus_client: ``surefoot metrics --markdown`` needs no extra.

Rule 1: every name carries the ``surefoot_`` prefix and follows Prometheus conventions
        (``_total`` counters, ``_seconds`` histograms in seconds).
Rule 2: no label takes a raw path, a key, a principal or an error text: every label value
        comes from configuration (routes, policies, breakers, stores) or a short fixed
        set, so the number of series stays bounded. ``error`` is an exception's class
        name, never its text. The outbox's endpoints are rows of a database, which an
        application may add by the thousand (one per customer): their ``endpoint`` label
        is the name for the first ``MAX_OUTBOX_ENDPOINTS`` names an instance sees, and
        ``"other"`` for the rest, as an unknown method is ``"other"``.
Rule 3: ``fed_by`` names what moves the metric: an event type (the hook counts it) or a
        method of the metrics object. A test checks each name against the handlers.
        The one exception is ``surefoot_top_requests``: its ``item`` is a principal (a
        hashed credential, an address) or an idempotency key's store key, at most
        ``[top] exported`` of them per list and policy, so its series stay bounded too.
Rule 4: ``group`` says who exposes the metric: every group but ``gateway`` and ``top`` is
        ``PrometheusMetrics``'s; ``gateway`` metrics exist only in ``GatewayMetrics``,
        because only the gateway emits what feeds them; ``top`` is a collector of
        ``GatewayMetrics`` (``set_top``): the lists merged across workers and hosts, read
        from the store, not counted in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GROUPS",
    "MAX_OUTBOX_ENDPOINTS",
    "METRICS",
    "MetricSpec",
    "metrics_markdown",
]

Kind = Literal["counter", "gauge", "histogram"]
#: How a gauge is added up over worker processes (prometheus_client's ``multiprocess_mode``).
MultiprocessMode = Literal[
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent",
    "livemostrecent",
]  # fmt: skip

#: A proxy's requests: from a cached answer (1 ms) to a slow upstream (30 s).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: A store call: from an in-memory step (0.1 ms) to a timeout (5 s).
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1, 2.5, 5)  # fmt: skip
#: Past this many endpoint names, the outbox's metrics label an endpoint ``"other"`` (Rule 2).
MAX_OUTBOX_ENDPOINTS = 1000
#: Past this many saga names, the saga metrics label a saga ``"other"`` (Rule 2).
MAX_SAGA_NAMES = 100
#: How long an outcome stayed unknown: from a quick retry (1 s) to a week.
UNKNOWN_AGE_BUCKETS = (1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 604800)


#: What the help of a metric with an outbox ``endpoint`` label says of its bound (Rule 2).
_BOUND = f' (endpoint: the first {MAX_OUTBOX_ENDPOINTS} names seen, then "other")'

#: The groups (Rule 4), in the docs' order, with the heading each gets there.
GROUPS = {
    "requests": "Requests",
    "ratelimit": "Rate limits",
    "idempotency": "Idempotency",
    "webhooks": "Receiving webhooks",
    "outbox": "Sending webhooks",
    "breaker": "Circuit breakers",
    "store": "Stores",
    "saga": "Sagas",
    "gateway": "Gateway only (`GatewayMetrics`)",
    "top": "Top offenders (`GatewayMetrics.set_top`)",
}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: what Prometheus is told about it and what feeds it.

    Args:
        name: the full metric name (a counter's includes ``_total``).
        kind: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        help: the ``# HELP`` line: one sentence.
        labels: the label names, in the order the code gives their values.
        fed_by: event type names and method names that move it (Rule 3).
        group: who exposes it (Rule 4).
        values: what the label values are, for the docs (empty: see Rule 2).
        buckets: a histogram's upper bounds in seconds.
        multiprocess_mode: how a gauge is added up over worker processes.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    fed_by: tuple[str, ...] = ()
    group: str = "requests"
    values: str = ""
    buckets: tuple[float, ...] = ()
    multiprocess_mode: MultiprocessMode = "all"


#: The table. Its order is the exposition's order, and the docs' order within a group.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "surefoot_http_requests_total",
        "counter",
        "Requests answered by the gateway.",
        labels=("route", "method", "status"),
        fed_by=("observe_request",),
        values='`route`: the matched route template or `"other"` (never the raw path); '
        '`method`: an HTTP method or `"other"`; `status`: the status code sent',
    ),
    MetricSpec(
        "surefoot_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response.",
        labels=("route", "method"),
        fed_by=("observe_request",),
        buckets=REQUEST_BUCKETS,
    ),
    MetricSpec(
        "surefoot_inflight_requests",
        "gauge",
        "Requests the gateway is handling now.",
        fed_by=("inflight",),
        multiprocess_mode="livesum",
        values="with several worker processes, the sum over the live ones",
    ),
    MetricSpec(
        "surefoot_upstream_requests_total",
        "counter",
        "Requests forwarded upstream, by outcome (status class or failure).",
        labels=("outcome",),
        fed_by=("observe_upstream",),
        group="gateway",
        values='`outcome`: a status class (`"2xx"`...), `"connect_error"`, `"timeout"` '
        'or `"reset"`',
    ),
    MetricSpec(
        "surefoot_upstream_duration_seconds",
        "histogram",
        "Time the upstream took to answer a forwarded request (or to fail).",
        fed_by=("observe_upstream",),
        group="gateway",
        buckets=REQUEST_BUCKETS,
    ),
    MetricSpec(
        "surefoot_upstream_failures_total",
        "counter",
        "Forwarded requests the upstream did not answer properly.",
        labels=("reason",),
        fed_by=("UpstreamFailed",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_shed_total",
        "counter",
        "Requests refused with 503 at the upstream's concurrency limit.",
        labels=("priority",),
        fed_by=("RequestShed",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_abuse_refused_total",
        "counter",
        "Requests refused by abuse protection: banned, over a temporary limit, or sent to "
        "the challenge.",
        labels=("action",),
        fed_by=("AbuseRefused",),
        group="gateway",
        values='`action`: `"ban"`, `"limit"` or `"challenge"`',
    ),
    MetricSpec(
        "surefoot_abuse_entries_added_total",
        "counter",
        "Bans, allows, temporary limits and challenges put in force by the gateway and its "
        "admin API (the CLI's are in the abuse log).",
        labels=("action", "source"),
        fed_by=("EntryAdded",),
        group="gateway",
        values='`action`: `"ban"`, `"allow"`, `"limit"` or `"challenge"`; `source`: '
        '`"admin"`, `"anomaly"` or `"failures:RULE"` (a rule of the policy file)',
    ),
    MetricSpec(
        "surefoot_abuse_entries_removed_total",
        "counter",
        "Entries lifted before their expiry through the admin API (the CLI's are in the abuse "
        "log).",
        labels=("action",),
        fed_by=("EntryRemoved",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_abuse_thresholds_total",
        "counter",
        "Failure rules' thresholds crossed (a ban) and challenge_after reached.",
        labels=("rule", "step"),
        fed_by=("FailuresCrossed",),
        group="gateway",
        values='`rule`: a rule\'s name; `step`: `"ban"` or `"challenge"`',
    ),
    MetricSpec(
        "surefoot_abuse_anomalies_total",
        "counter",
        "Clients whose request rate rose above the anomaly factor times their usual rate.",
        fed_by=("AnomalyStarted",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_abuse_anomalous_clients",
        "gauge",
        "Clients whose request rate is anomalous now, as this worker sees them.",
        fed_by=("set_anomalous",),
        group="gateway",
        multiprocess_mode="livemax",
        values="with several worker processes, the most any live one sees",
    ),
    MetricSpec(
        "surefoot_abuse_entries",
        "gauge",
        "Bans, allows, temporary limits and challenges in force, shared by every worker.",
        labels=("action", "kind"),
        fed_by=("set_abuse_entries",),
        group="gateway",
        multiprocess_mode="livemostrecent",
        values='`kind`: `"address"`, `"network"`, `"principal"` or `"account"`',
    ),
    MetricSpec(
        "surefoot_deprecated_requests_total",
        "counter",
        "Requests to a route deprecated for their client: who still calls it before the sunset.",
        labels=("route", "client", "phase"),
        fed_by=("DeprecatedCalled",),
        group="gateway",
        values='`client`: a `[[clients]]` name, or `"other"`; `phase`: `"announced"`, '
        '`"deprecated"`, `"brownout"` or `"retired"` (the last two were answered 410)',
    ),
    MetricSpec(
        "surefoot_version_pins_total",
        "counter",
        "Clients pinned to an API version at their first request (`[versions] pin = "
        '"first_used"`).',
        labels=("version",),
        fed_by=("VersionPinned",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_config_reloads_total",
        "counter",
        "Configuration reloads, applied or refused.",
        labels=("result",),
        fed_by=("ConfigReloaded", "ConfigRefused"),
        group="gateway",
        values='`result`: `"applied"` or `"refused"`',
    ),
    MetricSpec(
        "surefoot_ratelimit_decisions_total",
        "counter",
        "Rate-limit decisions, one per policy that covered the request.",
        labels=("policy", "outcome"),
        fed_by=("RateLimitAllowed", "RateLimitRejected", "RateLimitShadowRejected"),
        group="ratelimit",
        values='`outcome`: `"allowed"` (once per policy in `RateLimitAllowed.policies`), '
        '`"rejected"` or `"shadow_rejected"`',
    ),
    MetricSpec(
        "surefoot_ratelimit_store_errors_total",
        "counter",
        "Requests whose rate-limit store call failed, by what their policies chose.",
        labels=("action", "error"),
        fed_by=("RateLimitStoreFailed",),
        group="ratelimit",
    ),
    MetricSpec(
        "surefoot_ratelimit_store_bypassed_total",
        "counter",
        "Requests decided without the rate-limit store while it was down.",
        labels=("action",),
        fed_by=("RateLimitStoreBypassed",),
        group="ratelimit",
    ),
    MetricSpec(
        "surefoot_idempotency_executions_total",
        "counter",
        "Idempotent requests that executed.",
        fed_by=("KeyReserved",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_replays_total",
        "counter",
        "Duplicates answered with the stored response.",
        fed_by=("ResponseReplayed",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_conflicts_total",
        "counter",
        "Duplicates that arrived while the original was executing.",
        fed_by=("RequestInProgress",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_mismatches_total",
        "counter",
        "Keys reused with a different request (422).",
        fed_by=("KeyReused",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_unknown_total",
        "counter",
        "Keys whose outcome became unknown.",
        labels=("reason",),
        fed_by=("OutcomeUnknown",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_resolutions_total",
        "counter",
        "Unknown outcomes settled, by how and with what result.",
        labels=("how", "result"),
        fed_by=("OutcomeResolved",),
        group="gateway",
    ),
    MetricSpec(
        "surefoot_idempotency_unknown_age_seconds",
        "histogram",
        "How long an outcome had been unknown when it was settled.",
        fed_by=("OutcomeResolved",),
        group="gateway",
        buckets=UNKNOWN_AGE_BUCKETS,
    ),
    MetricSpec(
        "surefoot_idempotency_unknown_keys",
        "gauge",
        "Keys whose outcome is unknown, as last counted by the reconciler.",
        fed_by=("set_unknown_keys",),
        group="idempotency",
        multiprocess_mode="livemostrecent",
        values="with several worker processes, the most recent report of a live one",
    ),
    MetricSpec(
        "surefoot_idempotency_store_errors_total",
        "counter",
        "Requests whose idempotency store call failed, by phase and what followed.",
        labels=("phase", "action", "error"),
        fed_by=("StoreFailed",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_store_bypassed_total",
        "counter",
        "Requests that skipped the idempotency store while it was down.",
        labels=("phase", "action"),
        fed_by=("StoreBypassed",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_idempotency_unprotected_total",
        "counter",
        "Requests executed without idempotency protection (the store was down).",
        labels=("reason",),
        fed_by=("ExecutedUnprotected",),
        group="idempotency",
    ),
    MetricSpec(
        "surefoot_webhooks_received_total",
        "counter",
        "Verified and refused webhook deliveries, by what became of them.",
        labels=("endpoint", "outcome"),
        fed_by=(
            "WebhookProcessed",
            "WebhookDuplicate",
            "WebhookStale",
            "WebhookBusy",
            "WebhookFailed",
            "WebhookRefused",
            "WebhookReplayed",
        ),
        group="webhooks",
        values='`endpoint`: a configured endpoint name; `outcome`: `"processed"`, '
        '`"duplicate"` (the stored answer replayed), `"in_progress"` (a duplicate while '
        'the first runs), `"stale"` (older than its object\'s newest), `"busy"` (its object '
        'was being processed), `"failed"` (the app failed; released), `"refused"` or '
        '`"replayed"` (an operator replayed an archived event, whatever became of it)',
    ),
    MetricSpec(
        "surefoot_webhooks_refused_total",
        "counter",
        "Webhook deliveries refused before anything was stored, by problem code.",
        labels=("endpoint", "reason"),
        fed_by=("WebhookRefused",),
        group="webhooks",
        values='`reason`: a code of the catalogue (`"webhook_signature_mismatch"`...)',
    ),
    MetricSpec(
        "surefoot_webhooks_sent_total",
        "counter",
        "Attempts to deliver an outbox message, by what became of the delivery" + _BOUND + ".",
        labels=("endpoint", "outcome"),
        fed_by=("WebhookAttempted",),
        group="outbox",
        values='`outcome`: `"delivered"` (a 2xx), `"retrying"` (a later '
        'attempt is scheduled) or `"failed"` (the schedule is exhausted, or a 410)',
    ),
    MetricSpec(
        "surefoot_webhooks_send_duration_seconds",
        "histogram",
        "Time each attempt to deliver an outbox message took, failed ones included" + _BOUND + ".",
        labels=("endpoint",),
        fed_by=("WebhookAttempted",),
        group="outbox",
        buckets=REQUEST_BUCKETS,
    ),
    MetricSpec(
        "surefoot_webhooks_deferred_total",
        "counter",
        "Claimed deliveries put back unsent, their attempt count unchanged" + _BOUND + ".",
        labels=("endpoint", "reason"),
        fed_by=("WebhookDeferred",),
        group="outbox",
        values='`reason`: `"rate_limited"` (the endpoint\'s rate limit), '
        '`"rate_limit_unavailable"` (its store failed) or `"breaker_open"`',
    ),
    MetricSpec(
        "surefoot_webhooks_endpoint_disabled_total",
        "counter",
        "Endpoints the outbox worker disabled" + _BOUND + ".",
        labels=("endpoint", "reason"),
        fed_by=("WebhookEndpointDisabled",),
        group="outbox",
        values='`reason`: `"gone"` (it answered 410) or `"failing"` (it kept failing for '
        "`disable_after`)",
    ),
    MetricSpec(
        "surefoot_webhooks_queued",
        "gauge",
        "Deliveries waiting or in flight, as the last backlog report counted them" + _BOUND + ".",
        labels=("endpoint",),
        fed_by=("OutboxBacklog",),
        group="outbox",
        multiprocess_mode="livemostrecent",
        values="the series of an endpoint missing from the latest report is removed (set to 0 "
        'with several worker processes); `"other"` adds up the endpoints past the bound',
    ),
    MetricSpec(
        "surefoot_webhooks_oldest_undelivered_seconds",
        "gauge",
        "Age of an endpoint's oldest message waiting or in flight (0 when nothing waits)"
        + _BOUND
        + ".",
        labels=("endpoint",),
        fed_by=("OutboxBacklog",),
        group="outbox",
        multiprocess_mode="livemostrecent",
        values='`"other"`: the oldest of the endpoints past the bound',
    ),
    MetricSpec(
        "surefoot_webhooks_failed",
        "gauge",
        "Deliveries that failed for good and wait for a resend or a recover" + _BOUND + ".",
        labels=("endpoint",),
        fed_by=("OutboxBacklog",),
        group="outbox",
        multiprocess_mode="livemostrecent",
    ),
    MetricSpec(
        "surefoot_webhooks_endpoints_disabled",
        "gauge",
        "Outbox endpoints that are disabled, as the last backlog report counted them.",
        fed_by=("OutboxBacklog",),
        group="outbox",
        multiprocess_mode="livemostrecent",
    ),
    MetricSpec(
        "surefoot_sagas",
        "gauge",
        "Sagas in the log by state and name, as the last sweep counted them "
        f'(saga: the first {MAX_SAGA_NAMES} names seen, then "other").',
        labels=("state", "saga"),
        fed_by=("set_saga_counts",),
        group="saga",
        multiprocess_mode="livemostrecent",
        values="`state`: `running`, `compensating`, `completed`, `compensated`, "
        '`needs_attention`, `resolved`; `saga`: a saga\'s name or `"other"`',
    ),
    MetricSpec(
        "surefoot_saga_oldest_seconds",
        "gauge",
        "Time since the least recently changed saga in a state last changed, as the last "
        "sweep saw it (0 when none is in the state).",
        labels=("state",),
        fed_by=("set_saga_counts",),
        group="saga",
        multiprocess_mode="livemostrecent",
    ),
    MetricSpec(
        "surefoot_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes.",
        labels=("breaker", "from_state", "to_state"),
        fed_by=("BreakerStateChanged",),
        group="breaker",
    ),
    MetricSpec(
        "surefoot_breaker_state",
        "gauge",
        "1 for a circuit breaker's current state, 0 for the others.",
        labels=("breaker", "state"),
        fed_by=("BreakerStateChanged", "set_breaker_state"),
        group="breaker",
        values="`state`: a `BreakerState` value (`closed`, `open`, `half_open`, `forced_open`, "
        "`disabled`), one series per state; with several workers, how many live ones see it",
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "surefoot_breaker_rejections_total",
        "counter",
        "Calls refused because the circuit breaker was open.",
        labels=("breaker",),
        fed_by=("CallNotPermitted",),
        group="breaker",
    ),
    MetricSpec(
        "surefoot_store_outages_total",
        "counter",
        "Store outages that began.",
        labels=("layer",),
        fed_by=("StoreDown",),
        group="store",
    ),
    MetricSpec(
        "surefoot_store_operation_duration_seconds",
        "histogram",
        "Time a store call took (failed calls included).",
        labels=("store", "operation"),
        fed_by=("instrument_store",),
        group="store",
        buckets=STORE_BUCKETS,
        values="`store`: the name given to `instrument_store`; `operation`: the store method "
        "(`begin`, `finish`, `resolve`, `forget`, `get`, `records`, `purge`, `acquire`, `release`, "
        "`order_claim`, `order_settle`, `order_get`)",
    ),
    MetricSpec(
        "surefoot_store_errors_total",
        "counter",
        "Store calls that raised.",
        labels=("store", "operation"),
        fed_by=("instrument_store",),
        group="store",
    ),
    MetricSpec(
        "surefoot_top_requests",
        "gauge",
        "Requests of the clients at the top of each list over the last 5 minutes, merged "
        "across workers and hosts (an estimate from Space-Saving summaries: at most the "
        "summary's error above the true count); the clients refused also over the day.",
        labels=("list", "policy", "item", "client", "window"),
        fed_by=("set_top",),
        group="top",
        values="`list`: `refused`, `admitted`, `shadow`, `reused` or `unknown`; `policy`: a "
        'rate-limit policy or `""`; `item`: a principal, or for `reused` a principal and '
        "a store key; `client`: its name in `[[clients]]`, else its principal; "
        "`window`: `5m`, or `24h` for each client of a `refused` list",
    ),
)


def metrics_markdown() -> str:
    """The generated part of ``docs/metrics.md``: one table per group."""
    lines = [
        "<!-- Generated by `surefoot metrics --markdown`; do not edit by hand. -->",
    ]
    for group, heading in GROUPS.items():
        lines += [
            "",
            f"### {heading}",
            "",
            "| metric | type | labels | fed by | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for spec in METRICS:
            if spec.group != group:
                continue
            labels = ", ".join(f"`{label}`" for label in spec.labels)
            fed_by = ", ".join(f"`{name}`" for name in spec.fed_by)
            meaning = spec.help
            if spec.values:
                meaning += f" {spec.values[0].upper()}{spec.values[1:]}."
            if spec.buckets:
                meaning += f" Buckets: {', '.join(map(str, spec.buckets))}."
            lines.append(f"| `{spec.name}` | {spec.kind} | {labels} | {fed_by} | {meaning} |")
    lines += ["", "<!-- End of the generated part. -->"]
    return "\n".join(lines) + "\n"
