"""The gateway: ``surefoot serve`` puts idempotency, rate limits and upstream protection in
front of any HTTP API, from one policy file.

``Gateway`` is the ASGI app (``RateLimitMiddleware`` -> ``IdempotencyMiddleware`` ->
``ProxyApp``), ``AdminApp`` its admin API, ``load_config`` reads and validates the policy
file, ``check_start`` checks what serving it needs (``surefoot check-config``; a
``StartCheck``), ``consumer_docs`` writes the page an API's consumers read
(``surefoot docs``), ``serve`` runs it all with uvicorn. Needs ``surefoot[gateway]``.
"""

from __future__ import annotations

import importlib.util

if not all(
    importlib.util.find_spec(name)
    for name in ("httpx", "h11", "pydantic", "uvicorn", "httptools", "prometheus_client")
):  # pragma: no cover
    # Only without the extra: one line naming it, not the first import that fails.
    raise ImportError("surefoot.gateway needs the 'gateway' extra: pip install 'surefoot[gateway]'")

from surefoot.gateway._abuse import AbuseControl
from surefoot.gateway._alerts import AlertRule, alert_rules, rules_yaml
from surefoot.gateway._check import StartCheck, check_start
from surefoot.gateway._config import GatewayConfig, config_from_dict, load_config
from surefoot.gateway._consumer_docs import consumer_docs
from surefoot.gateway._events import (
    ConfigRefused,
    ConfigReloaded,
    GatewayEvent,
    OutcomeResolved,
    OverrideAdded,
    OverrideEvent,
    OverrideExpired,
    OverrideRemoved,
    RequestShed,
    UpstreamFailed,
    WebhookForgotten,
)
from surefoot.gateway._gateway import Gateway
from surefoot.gateway._head_only import head_only_protocol
from surefoot.gateway._lookup import LookupResolver
from surefoot.gateway._metrics import GatewayMetrics
from surefoot.gateway._override_board import OverrideControl, SharedOverrides
from surefoot.gateway._overrides import TemporaryOverride, apply_overrides
from surefoot.gateway._reconcile import Finding, Report, Sweeper
from surefoot.gateway._serve import serve
from surefoot.gateway._server import bounded_protocol
from surefoot.gateway._settings import AppSettings, app_settings
from surefoot.gateway._shed import LoadShedder
from surefoot.gateway._top import TopTracker
from surefoot.gateway._watch import AlertWatcher, Silences, parse_matcher
from surefoot.gateway.admin import AdminApp
from surefoot.gateway.proxy import ProxyApp

__all__ = [
    "AbuseControl",
    "AdminApp",
    "AlertRule",
    "AlertWatcher",
    "AppSettings",
    "ConfigRefused",
    "ConfigReloaded",
    "Finding",
    "Gateway",
    "GatewayConfig",
    "GatewayEvent",
    "GatewayMetrics",
    "LoadShedder",
    "LookupResolver",
    "OutcomeResolved",
    "OverrideAdded",
    "OverrideControl",
    "OverrideEvent",
    "OverrideExpired",
    "OverrideRemoved",
    "ProxyApp",
    "Report",
    "RequestShed",
    "SharedOverrides",
    "Silences",
    "StartCheck",
    "Sweeper",
    "TemporaryOverride",
    "TopTracker",
    "UpstreamFailed",
    "WebhookForgotten",
    "alert_rules",
    "app_settings",
    "apply_overrides",
    "bounded_protocol",
    "check_start",
    "config_from_dict",
    "consumer_docs",
    "head_only_protocol",
    "load_config",
    "parse_matcher",
    "rules_yaml",
    "serve",
]
