"""``AdminApp``: the gateway's admin API, a pure ASGI app on its own port.

Endpoints (JSON unless said otherwise; every one but the two probes needs
``Authorization: Bearer <token>``, compared in constant time)::

    GET  /healthz                       200 while the process serves (no token)
    GET  /readyz                        200 when the stores answer, else 503 (no token)
    GET  /metrics                       Prometheus exposition
    GET  /admin/config                  the configuration in force: running values,
                                        defaults filled in, secrets masked
    POST /admin/reload                  read the policy file again (422 if refused)
    GET  /admin/limits?client=NAME      current usage per policy and limit
         /admin/limits?principal=P
    GET  /admin/keys?principal=P&key=K  one idempotency record (route=ROUTE if scoped)
         /admin/keys?store_key=S
    GET  /admin/unknown                 keys whose outcome is unknown, with their age
    POST /admin/keys/resolve            {"store_key", "status", "body", "content_type"}
    POST /admin/keys/release            {"store_key"}: the request did not happen
    GET  /admin/webhooks/NAME/events/ID     a received event's state and stored status
    DELETE /admin/webhooks/NAME/events/ID   forget it: the sender's next delivery runs it
    POST /admin/webhooks/NAME/events/ID/replay  run its archived delivery through the
                                        upstream again (``archive = true``), its answer
    GET  /admin/outbox/endpoints        the outbox's endpoints (``[webhooks.send]``), no secret
    GET  /admin/outbox/endpoints/NAME   one endpoint
    POST /admin/outbox/endpoints/NAME/enable    deliver to it again (its waiting messages too)
    POST /admin/outbox/endpoints/NAME/disable   stop delivering to it: its queued messages
                                        wait; those recorded meanwhile are not queued for it
    POST /admin/outbox/endpoints/NAME/recover?since=T   its failed messages recorded at or
                                        after T (unix seconds or ISO-8601) queued again
    GET  /admin/outbox/deliveries?endpoint=&state=&message=&limit=   newest first
    GET  /admin/outbox/messages/ID/attempts     every attempt to deliver a message
    POST /admin/outbox/messages/ID/resend?endpoint=NAME   deliver it to NAME again
    GET  /admin/outbox/stats            every endpoint's backlog
    GET  /admin/sagas?state=&name=&older_than=&limit=   sagas (``[sagas]``), the least
                                        recently changed first
    GET  /admin/sagas/ID                one saga and its timeline
    POST /admin/sagas/ID/retry          {"reason", "actor"}: go on now, fresh attempts
    POST /admin/sagas/ID/compensate     {"reason", "actor"}: turn it back now
    POST /admin/sagas/ID/resolve        {"reason", "actor"}: a person settled it outside
    GET  /admin/reconcile               {"report": ...}: the last sweep's report (null
                                        before the first sweep ended)
    GET  /admin/top?list=&policy=&window=&limit=   the clients refused most (``refused``),
                                        admitted most (``admitted``), the keys reused
                                        with another request (``reused``), the clients
                                        with unknown outcomes (``unknown``), merged across
                                        workers and hosts (``[top]``); those a policy in
                                        shadow or rolled out would refuse (``shadow``)
    GET  /admin/rollouts?window=&limit=   each policy in shadow or rolled out: its stage,
                                        the clients it is enforced for, and who it would
                                        refuse (``would_break``, the ``shadow`` top list)
    GET  /admin/deprecations?window=&days=&limit=   each deprecated route: its dates, its
                                        phase now, its brownout windows of the next
                                        ``days`` (default 30), and who still calls it
                                        (``callers``, over ``window``, default 24h)
    GET  /admin/versions                the API's versions and the clients pinned to each
    GET  /admin/series?range=15m|1h|6h|24h   the dashboard's charts: rates and gauges
    GET  /admin/alerts                  the gateway's own alerts and the silences muting them
    GET  /admin/silences                every silence, expired ones for a day
    POST /admin/silences                {"matchers": [{"name", "op", "value"}], "duration"
                                        | "ends_at", "starts_at", "comment", "created_by"}
    DELETE /admin/silences/ID           expire a silence now
    GET  /admin/bans?action=&kind=&limit=   bans, allows, temporary limits and challenges
                                        in force (``[abuse]``), the policy file's included
    POST /admin/bans                    {"action", one of "address" | "network" | "principal"
                                        | "key" | "account", "duration" | "until", "reason",
                                        "rate", "by"}: in force on every worker within a
                                        second (``gateway/_abuse.py`` has the rules)
    POST /admin/bans/remove             {"action", the subject, "reason", "by"}: lift it
    GET  /admin/overrides?audit=1       temporary rate-limit overrides in force (and, with
                                        audit=1, their audit trail: who changed what, why)
    POST /admin/overrides               {"policy", "client" (none: every client), "limits",
                                        "for" | "until", "reason", "by"}: in force on every
                                        worker within a second, until it expires by itself
                                        (``gateway/_overrides.py`` has the rules)
    POST /admin/overrides/remove        {"policy", "client", "reason", "by"}: end it now
    GET  /admin/dashboard               the dashboard page and its files (no token: they
                                        hold no data; the page asks for the token)

Errors are problems from the catalogue: 401 ``admin_unauthorized``, 404
``admin_not_found``, 422 ``config_rejected``, 400 ``admin_bad_request`` for a malformed
admin request, 409 ``saga_action_refused`` for a saga action its state does not allow.
Reading usage decides nothing: each limit is asked with a cost of 0.

Rule 1: every input is checked before the store is touched, and anything else is a 400
        ``admin_bad_request`` saying what was expected: query parameters are those the
        endpoint names, each at most once, 1 to 1024 printable characters; ``limit`` is a
        whole number from 1 to 10000; a JSON body is one object of the endpoint's fields
        (at most 4 MiB; no ``NaN``); what ``resolve`` stores passes
        ``surefoot._operator`` (a final status, a clean content type, JSON
        when it says JSON), so nothing invalid is ever stored.
Rule 2: a webhook event's path has exactly the parts it names, each percent-decoded from
        the raw path (an event id may hold an encoded ``/``): ``NAME`` is the name of a
        ``[[webhooks.receive]]`` table (else 404 ``admin_not_found``), ``ID`` 1 to 255
        printable ASCII characters, as an event id is (else 400 ``admin_bad_request``).
        An event whose delivery is running (in flight, its lease not run out) is never
        forgotten nor replayed: its sender's next delivery would run it beside the first.
        A replay's path ends in ``/replay`` and its body, if any, is an empty JSON object.
Rule 3: the outbox's endpoints answer 404 ``admin_not_found`` when the gateway has no
        ``[webhooks.send]``, as for an unknown endpoint or message. Their path parts are
        percent-decoded from the raw path like an event's (Rule 2); a POST's body, if any,
        is an empty JSON object. The outbox is synchronous: each call runs in a thread.
        An endpoint is shown without its secrets (``Endpoint`` holds only their count),
        its URL masked like a store URL; a database failure is 503 ``store_unavailable``.
Rule 4: the saga endpoints and ``/admin/reconcile`` answer 404 ``admin_not_found`` when
        the gateway has no ``[sagas]`` table. A saga's id is percent-decoded from the raw
        path like an event id (Rule 2); ``older_than`` is seconds or a duration (``30s``,
        ``10m``, ``2h``, ``3d``, ``1w``); an action's body is ``{"reason": ...}`` with an
        optional ``"actor"`` (default ``"admin"``), both checked by ``SagaLog`` (printable
        ASCII; an actor without spaces), and recorded in the saga's timeline.
Rule 5: ``/admin/top`` takes a ``list`` (default ``refused``), a ``policy`` of the file for
        the lists per policy (none for the others), a ``window`` (``1m``, ``5m``,
        ``15m``, ``1h``, ``6h``, ``24h``; default ``5m``) and a ``limit`` (default 20).
        Each count is an estimate at most its ``error`` above the true count; every
        client above ``error_bound`` is listed. A silence's fields are checked by
        ``surefoot.metrics.Silence`` (a 400 names the field), its ``duration`` at most
        a year. The dashboard's files are sent with a Content-Security-Policy that lets
        the page load only its own files and talk only to this API.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import os
import re
import signal
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from surefoot._asgi import Receive, Scope, Send, request_id, send_problem
from surefoot._masking import masked_url, shown
from surefoot._operator import (
    MAX_BODY,
    operator_response,
    operator_store_key,
    refuse_constant,
)
from surefoot.abuse import Action, Kind
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    AdminBadRequest,
    AdminNotFound,
    AdminUnauthorized,
    ConfigRejected,
    ConfigurationError,
    SurefootError,
)
from surefoot.events import emit
from surefoot.gateway._abuse import FIELDS, by_of, duration_seconds, listed
from surefoot.gateway._events import OutcomeResolved, WebhookForgotten
from surefoot.gateway._gateway import Gateway
from surefoot.gateway._lookup import LOOKUP_PREFIX
from surefoot.gateway._override_board import FIELDS as OVERRIDE_FIELDS
from surefoot.gateway._override_board import OverrideControl
from surefoot.gateway._top import DEPRECATED, LISTS, WINDOWS, deprecated_key
from surefoot.gateway._watch import RANGES
from surefoot.idempotency import Record, State, StoredResponse, classify, scoped_key
from surefoot.metrics import Matcher
from surefoot.ratelimit import Item, limit_key
from surefoot.webhooks import WebhookReceiver, is_event_id, webhook_store_key

if TYPE_CHECKING:
    from surefoot.outbox import Endpoint, Outbox
    from surefoot.saga import SagaLog

__all__ = ["AdminApp"]

_T = TypeVar("_T")

_JSON = b"application/json"
#: Room for a stored body of ``MAX_BODY`` bytes written as a JSON string (Rule 1).
_MAX_REQUEST = 4 * MAX_BODY
_LIMIT = re.compile(r"[0-9]{1,5}")
_WEBHOOKS = "/admin/webhooks/"
_OUTBOX = "/admin/outbox/"
_SAGAS = "/admin/sagas/"
_SILENCES = "/admin/silences/"
_SILENCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DASHBOARD = "/admin/dashboard"
_DASHBOARD_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "uplot.min.js": b"text/javascript; charset=utf-8",
    "uplot.min.css": b"text/css; charset=utf-8",
}
#: The page loads its own files and talks to the admin API only.
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_SAGA_ACTIONS = frozenset({"retry", "compensate", "resolve"})
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhdw]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_EVENT_METHODS = frozenset({"GET", "DELETE", "POST"})
_REMOVAL = ("policy", "client", "reason", "by")


class AdminApp:
    """The admin API of one ``Gateway``.

    Args:
        gateway: the gateway to inspect and steer.
        on_reload: called after a successful ``POST /admin/reload`` (``surefoot serve`` with
            several workers passes a function telling the others to reload too).
        running: what the process runs with where it differs from the file, shown by
            ``GET /admin/config`` (``surefoot serve`` passes the addresses it bound and its
            number of workers: ``{"server": {"port": 8443, ...}, "admin": {...}}``).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        on_reload: Callable[[], None] | None = None,
        running: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.on_reload = on_reload
        self.running = running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/healthz":
                await _json(send, 200, {"status": "ok", "generation": self.gateway.generation})
                return
            if path == "/readyz":
                await self.ready(send)
                return
            if path == _DASHBOARD or path.startswith(_DASHBOARD + "/"):
                await self.dashboard(scope, send)
                return
            self.authorize(scope)
            handler = _ROUTES.get((method, path))
            if handler is None and path.startswith(_WEBHOOKS) and method in _EVENT_METHODS:
                await self.webhook_event(scope, receive, send)
                return
            if handler is None and path.startswith(_OUTBOX):
                await self.outbox(scope, receive, send)
                return
            if handler is None and path.startswith(_SILENCES):
                await self.silence(scope, receive, send)
                return
            if handler is None and path.startswith(_SAGAS):
                await self.saga(scope, receive, send)
                return
            if handler is None:
                raise AdminNotFound(what=f"{method} {path}")
            await handler(self, scope, receive, send)
        except SurefootError as exc:
            await send_problem(send, exc, request_id=request_id(scope), base=DEFAULT_PROBLEM_BASE)

    def authorize(self, scope: Scope) -> None:
        token = self.gateway.stack.config.admin_token
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        expected = f"Bearer {token}".encode() if token else None
        if expected is None or not hmac.compare_digest(given, expected):
            raise AdminUnauthorized()

    async def ready(self, send: Send) -> None:
        stack = self.gateway.stack
        try:
            await stack.idempotency_store.get("surefoot-readyz", self.gateway.clock.now())
        except Exception:
            await _json(send, 503, {"status": "unavailable", "reason": "store"})
            return
        breaker = stack.proxy.breaker
        state = breaker.state.value if breaker is not None else "disabled"
        await _json(send, 200, {"status": "ready", "breaker": state})

    # -- endpoints ---------------------------------------------------------------------------

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.refresh_top()
        self.gateway.refresh_abuse()
        body, content_type = self.gateway.metrics.render()
        await _send(send, 200, body, content_type.encode())

    async def config(self, scope: Scope, receive: Receive, send: Send) -> None:
        effective = self.gateway.stack.config.effective(self.running)
        await _json(send, 200, {"generation": self.gateway.generation, "config": effective})

    async def reload(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            changed = await self.gateway.reload()
        except ConfigurationError as exc:
            raise ConfigRejected(problems=str(exc)) from None
        if changed and self.on_reload is not None:
            self.on_reload()
        await _json(send, 200, {"reloaded": changed, "generation": self.gateway.generation})

    async def limits(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope, "client", "principal")
        stack = self.gateway.stack
        config = stack.config
        if len(query) > 1:
            raise AdminBadRequest(reason="expected ?client=NAME or ?principal=P, not both")
        if "client" in query:
            principals = [p for p, n in config.principals.items() if n == query["client"]]
            if not principals:
                raise AdminNotFound(what=f"client {query['client']!r}")
        elif "principal" in query:
            principals = [query["principal"]]
        else:
            raise AdminBadRequest(reason="expected ?client=NAME or ?principal=P")
        now = self.gateway.clock.now()
        report = []
        for principal in principals:
            tier = config.tiers.get(principal)
            items, labels = [], []
            # The policies in force: the file's, with the temporary overrides applied.
            limiter = stack.rate_limiter
            in_force = limiter.policies if limiter is not None else config.rate_limit_policies
            for policy in in_force:
                if principal in policy.allow or policy.per_route:
                    continue
                if policy.per == "address" and not principal.startswith("addr:"):
                    continue  # counted per address: not this principal's counter
                for limit in policy.limits_for(principal, tier):
                    if limit.algorithm == "concurrency":
                        continue  # in-flight slots are not a rate
                    key = limit_key(policy.name, limit, principal, "")
                    items.append(Item(key, limit.algorithm or "", limit, 0, True, ""))
                    labels.append(
                        (policy.name, limit.describe(), not policy.enforced_for(principal))
                    )
            decisions = await stack.rate_limit_store.acquire(items, now) if items else (True, [])
            report.append(
                {
                    "principal": principal,
                    "tier": tier,
                    "limits": [
                        {
                            "policy": name,
                            "limit": limit,
                            "shadow": shadow,
                            "remaining": decision.remaining,
                            "reset_after": round(decision.reset_after, 3),
                        }
                        for (name, limit, shadow), decision in zip(
                            labels, decisions[1], strict=True
                        )
                    ],
                }
            )
        await _json(send, 200, {"principals": report})

    async def top(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope, "list", "policy", "window", "limit")
        tracker = self.gateway.top
        if tracker is None:
            raise AdminNotFound(what="top offenders ([top] enabled = false)")
        config = self.gateway.stack.config
        name, window = query.get("list", "refused"), query.get("window", "5m")
        if name not in LISTS:
            raise AdminBadRequest(
                reason=f"list: expected one of {', '.join(LISTS)}, got {shown(name)}"
            )
        if window not in WINDOWS:
            raise AdminBadRequest(
                reason=f"window: expected one of {', '.join(WINDOWS)}, got {shown(window)}"
            )
        policies = [policy.name for policy in config.rate_limit_policies]
        policy = query.get("policy", "")
        if LISTS[name] and policy not in policies:
            known = ", ".join(policies) or "(none)"
            raise AdminBadRequest(reason=f"policy: expected one of {known}, got {shown(policy)}")
        if not LISTS[name] and policy:
            raise AdminBadRequest(reason=f"policy: the list {name} is not per policy")
        limit = _limit(query.get("limit", "20"))
        merged = await tracker.read(name, policy, window)
        items = []
        for found in merged.top(limit):
            principal, _, store_key = found.item.partition(" ")
            item = {
                "principal": principal,
                "client": config.principals.get(principal),
                "count": found.count,
                "error": found.error,
            }
            if name == "reused":
                item["store_key"] = store_key
            items.append(item)
        await _json(
            send,
            200,
            {
                "list": name,
                "policy": policy or None,
                "window": window,
                "k": merged.k,
                "total": merged.total,
                "error_bound": merged.total / merged.k,
                "items": items,
            },
        )

    async def rollouts(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Each policy in shadow or rolled out: its stage, who it is enforced for, and
        who a stricter stage would break (its ``shadow`` top list over ``window``)."""
        query = _query(scope, "window", "limit")
        window = query.get("window", "1h")
        if window not in WINDOWS:
            raise AdminBadRequest(
                reason=f"window: expected one of {', '.join(WINDOWS)}, got {shown(window)}"
            )
        limit = _limit(query.get("limit", "20"))
        config = self.gateway.stack.config
        tracker = self.gateway.top
        staged = []
        for policy in config.rate_limit_policies:
            rollout = policy.rollout
            if rollout is None and not policy.shadow:
                continue
            percent = 0.0 if rollout is None else rollout.percent
            listed: frozenset[str] = frozenset(() if rollout is None else rollout.principals)
            if percent >= 100:
                stage = "enforced"
            elif percent > 0 or listed:
                stage = "partial"
            else:
                stage = "shadow"
            would_break: dict[str, Any] | None = None
            if tracker is not None:  # [top] enabled = false: nothing is counted
                merged = await tracker.read("shadow", policy.name, window)
                would_break = {
                    "total": merged.total,
                    "k": merged.k,
                    "error_bound": merged.total / merged.k,
                    "items": [
                        {
                            "principal": found.item,
                            "client": config.principals.get(found.item),
                            "enforced": policy.enforced_for(found.item),
                            "count": found.count,
                            "error": found.error,
                        }
                        for found in merged.top(limit)
                    ],
                }
            staged.append(
                {
                    "name": policy.name,
                    "stage": stage,
                    "percent": percent,
                    "clients": sorted({config.principals.get(p, p) for p in listed}),
                    "would_break": would_break,
                }
            )
        await _json(send, 200, {"window": window, "policies": staged})

    async def series(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = _query(scope, "range").get("range", "1h")
        if span not in RANGES:
            raise AdminBadRequest(
                reason=f"range: expected one of {', '.join(RANGES)}, got {shown(span)}"
            )
        await _json(send, 200, self.gateway.watcher.charts(span))

    async def alerts(self, scope: Scope, receive: Receive, send: Send) -> None:
        _query(scope)
        watcher = self.gateway.watcher
        await watcher.read_silences()
        await _json(send, 200, {"evaluated": watcher.evaluate, "alerts": watcher.listed()})

    async def silences(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = self.gateway.watcher
        now = self.gateway.clock.now()
        if scope["method"] == "GET":
            _query(scope)
            listed = [
                {**silence.as_dict(), "active": silence.active(now)}
                for silence in await watcher.read_silences()
            ]
            await _json(send, 200, {"silences": listed})
            return
        body = await _body(
            receive, "matchers", "duration", "ends_at", "starts_at", "comment", "created_by"
        )
        try:
            matchers = [Matcher.from_dict(item) for item in _list(body, "matchers")]
            starts_at, ends_at = _silence_times(body, now)
            silence = await watcher.board_silences.add(
                matchers,
                now=now,
                starts_at=starts_at,
                ends_at=ends_at,
                comment=body.get("comment", ""),
                created_by=body.get("created_by", "admin"),
            )
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        await _json(send, 201, {"id": silence.id, "silence": silence.as_dict()})

    async def silence(self, scope: Scope, receive: Receive, send: Send) -> None:
        silence_id = unquote_to_bytes(scope["path"][len(_SILENCES) :]).decode("utf-8", "replace")
        if scope["method"] != "DELETE" or not _SILENCE_ID.fullmatch(silence_id):
            raise AdminNotFound(what=f"{scope['method']} {scope['path']}")
        _query(scope)
        watcher = self.gateway.watcher
        silence = await watcher.board_silences.expire(silence_id, self.gateway.clock.now())
        if silence is None:
            raise AdminNotFound(what=f"silence {silence_id!r}")
        await _json(send, 200, {"id": silence_id, "expired": True, "silence": silence.as_dict()})

    async def deprecations(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope, "window", "days", "limit")
        window = query.get("window", "24h")
        if window not in WINDOWS:
            raise AdminBadRequest(
                reason=f"window: expected one of {', '.join(WINDOWS)}, got {shown(window)}"
            )
        days = _limit(query.get("days", "30"), most=366, name="days")
        limit = _limit(query.get("limit", "20"))
        config = self.gateway.stack.config
        now = self.gateway.clock.now()
        tracker = self.gateway.top
        routes = []
        for route, life in config.lifecycles.items():
            callers = None
            if tracker is not None:
                merged = await tracker.read(DEPRECATED, deprecated_key(route), window)
                callers = [
                    {
                        "principal": found.item,
                        "client": config.principals.get(found.item),
                        "count": found.count,
                        "error": found.error,
                    }
                    for found in merged.top(limit)
                ]
            windows = life.windows_between(now, now + days * 86400.0)
            routes.append(
                {
                    "route": route,
                    "phase": life.phase(now).value if life.clients is None else None,
                    "deprecated": _iso(life.deprecated),
                    "sunset": _iso(life.sunset),
                    "extensions": {name: _iso(at) for name, at in life.extensions.items()},
                    "clients": sorted(life.clients) if life.clients is not None else None,
                    "replacement": life.replacement,
                    "link": life.link,
                    "brownout_critical": life.brownout_critical,
                    "brownouts": [
                        {
                            "start": _iso(w.start),
                            "end": _iso(w.end),
                            "seconds": round(w.end - w.start),
                        }
                        for w in windows[:_LISTED]
                    ],
                    "callers": callers,
                    "window": window,
                }
            )
        await _json(send, 200, {"now": _iso(now), "routes": routes})

    async def versions(self, scope: Scope, receive: Receive, send: Send) -> None:
        _query(scope)
        stack = self.gateway.stack
        config, table = stack.config, stack.config.root.versions
        if config.versions is None or table is None:
            raise AdminNotFound(what="versions (the policy file has no [versions])")
        pinned: dict[str, list[dict[str, str]]] = {v: [] for v in config.versions.dates}
        for name, version in config.client_versions.items():
            pinned[version].append({"client": name, "source": "config"})
        pins = (
            stack.contracts.versioning.pins
            if stack.contracts and stack.contracts.versioning
            else None
        )
        if pins is not None:
            now = self.gateway.clock.now()
            for who, version in sorted((await pins.read(now)).items()):
                client = who.removeprefix("client:") if who.startswith("client:") else None
                if client is not None and client in config.client_versions:
                    continue  # the file's version wins over the recorded one
                entry = {"client": client} if client is not None else {"principal": who}
                pinned[config.versions.current(version)].append(
                    {**entry, "source": "recorded", "recorded": version}
                )
        await _json(
            send,
            200,
            {
                "versions": list(config.versions.dates),
                "latest": config.versions.latest,
                "header": table.header,
                "forward_header": table.forward_header,
                "pin": table.pin,
                "initial": table.initial or config.versions.latest,
                "clients": pinned,
            },
        )

    async def bans(self, scope: Scope, receive: Receive, send: Send) -> None:
        control = self.gateway.abuse_control()
        if control is None:
            raise AdminNotFound(what="[abuse] (enabled = false)")
        now = self.gateway.clock.now()
        if scope["method"] == "GET":
            query = _query(scope, "action", "kind", "limit")
            try:
                action = Action(query["action"]) if "action" in query else None
                kind = Kind(query["kind"]) if "kind" in query else None
            except ValueError:
                raise AdminBadRequest(
                    reason="action: expected ban, allow, limit or challenge; kind: expected "
                    "address, network, principal or account"
                ) from None
            limit = _limit(query.get("limit", "1000"), most=100_000)
            found = control.listing(now, action=action, kind=kind)
            await _json(send, 200, {"entries": found[:limit], "total": len(found)})
            return
        remove = scope["path"].endswith("/remove")
        fields = await _body(receive, *FIELDS)
        try:
            by = by_of(fields.pop("by", "admin"))
            if remove:
                removed = await control.remove(fields, now, by=by)
            else:
                added = await control.add(fields, now, by=by)
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        if remove:
            if not removed:
                raise AdminNotFound(what="no such entry in force")
            body = {"removed": [listed(entry, now, False) for entry in removed]}
            await _json(send, 200, body)
            return
        await _json(send, 201, {"added": [listed(entry, now, False) for entry in added]})

    async def overrides(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        control = OverrideControl(gateway.overrides, gateway.stack.config)
        now = gateway.clock.now()
        if scope["method"] == "GET":
            audit = _query(scope, "audit").get("audit", "0")
            if audit not in ("0", "1"):
                raise AdminBadRequest(reason=f"audit: expected 1 or 0, got {shown(audit)}")
            found: dict[str, Any] = {"overrides": await control.listing()}
            if audit == "1":
                found["audit"] = await control.audit()
            await _json(send, 200, found)
            return
        if scope["path"].endswith("/remove"):
            body = await _body(receive, *_REMOVAL)
            try:
                removed = await control.remove(body)
            except ValueError as exc:
                raise AdminBadRequest(reason=str(exc)) from None
            if removed is None:
                raise AdminNotFound(what="no such override in force")
            gateway.apply_overrides()
            await _json(send, 200, {"removed": removed.listed(now)})
            return
        body = await _body(receive, *OVERRIDE_FIELDS)
        try:
            override, replaced = await control.add(body)
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        gateway.apply_overrides()
        answer = {
            "added": override.listed(now),
            "replaced": replaced.listed(now) if replaced is not None else None,
        }
        await _json(send, 201, answer)

    async def dashboard(self, scope: Scope, send: Send) -> None:
        """The dashboard's page and files: static, no data in them, so no token (the
        page asks for it and sends it with each request for data)."""
        name = scope["path"][len(_DASHBOARD) :].lstrip("/") or "index.html"
        content_type = _DASHBOARD_FILES.get(name)
        if scope["method"] != "GET" or content_type is None:
            raise AdminNotFound(what=f"{scope['method']} {scope['path']}")
        body = resources.files("surefoot.gateway").joinpath("_dashboard", name).read_bytes()
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", _CSP),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def keys(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope, "store_key", "principal", "key", "route")
        if "store_key" in query and len(query) == 1:
            store_key = query["store_key"]
        elif "store_key" not in query and "principal" in query and "key" in query:
            store_key = scoped_key(query["principal"], query["key"], query.get("route"))
        else:
            raise AdminBadRequest(reason="expected ?store_key=S or ?principal=P&key=K[&route=R]")
        record = await self.gateway.stack.idempotency_store.get(store_key, self.gateway.clock.now())
        if record is None:
            raise AdminNotFound(what=f"idempotency key {store_key!r}")
        await _json(send, 200, _record(store_key, record, self.gateway.clock.now()))

    async def unknown(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = _limit(_query(scope, "limit").get("limit", "100"))
        now = self.gateway.clock.now()
        records = await self.gateway.stack.idempotency_store.records(
            now, state=State.UNKNOWN, limit=limit
        )
        listed = [_record(k, r, now) for k, r in records if not k.startswith(LOOKUP_PREFIX)]
        await _json(send, 200, {"unknown": listed})

    async def resolve(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await _body(receive, "store_key", "status", "body", "content_type")
        body = data.get("body", "")
        try:
            store_key = operator_store_key(data.get("store_key"))
            # A JSON value is stored as its JSON text; a string as it is.
            content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            response = operator_response(
                data.get("status"), content, data.get("content_type", "application/json")
            )
        except ValueError as exc:  # a lone surrogate in "body" (UnicodeEncodeError) too
            raise AdminBadRequest(reason=str(exc)) from None
        await self.settle(scope, send, store_key, response)

    async def release(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await _body(receive, "store_key")
        try:
            store_key = operator_store_key(data.get("store_key"))
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        await self.settle(scope, send, store_key, None)

    async def settle(
        self, scope: Scope, send: Send, store_key: str, response: StoredResponse | None
    ) -> None:
        store = self.gateway.stack.idempotency_store
        now = self.gateway.clock.now()
        record = await store.get(store_key, now)
        if record is None:
            raise AdminNotFound(what=f"idempotency key {store_key!r}")
        if response is None:
            done = await store.forget(store_key, now)
        else:
            done = await store.resolve(store_key, response, now)
        await store.forget(LOOKUP_PREFIX + store_key, now)
        result = "released" if response is None else "resolved"
        emit(
            self.gateway.hooks,
            OutcomeResolved(
                at=now,
                request_id=request_id(scope),
                store_key=store_key,
                how="admin",
                result=result,
                age=_age(record, now),
            ),
        )
        await _json(send, 200, {"store_key": store_key, "result": result, "changed": done})

    async def webhook_event(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET`` or ``DELETE /admin/webhooks/NAME/events/ID``, ``POST .../replay``
        (Rule 2)."""
        name, event_id, replay = _webhook_event_path(scope)
        if (scope["method"], replay) not in (("GET", False), ("DELETE", False), ("POST", True)):
            raise AdminNotFound(what=f"{scope['method']} {scope['path']}")
        stack = self.gateway.stack
        webhook = stack.config.webhooks.get(name)
        store = stack.webhook_stores.get(name)
        receiver = stack.webhook_receivers.get(name)
        if webhook is None or store is None or receiver is None:
            raise AdminNotFound(what=f"webhook endpoint {name!r}")
        if replay:
            await _body(receive)  # nothing to say but an empty object (Rule 1)
            await self.replay(scope, send, receiver, name, event_id)
            return
        store_key = webhook_store_key(name, event_id)
        now = self.gateway.clock.now()
        record = await store.get(store_key, now)
        found = {"endpoint": name, "event_id": event_id, **webhook_record(store_key, record, now)}
        if scope["method"] == "GET":
            await _json(send, 200, found)
            return
        if record is None:
            raise AdminNotFound(what=f"event {event_id!r} of webhook endpoint {name!r}")
        state = classify(record, now)
        if state is State.IN_FLIGHT:
            raise AdminBadRequest(
                reason=f"event {event_id!r} is being processed (its lease runs out in "
                f"{math.ceil(record.lease_expires_at - now)} s): forget it once its delivery "
                "has ended or its lease has run out, or a delivery now would run it twice"
            )
        forgotten = await store.forget(store_key, now)
        emit(
            self.gateway.hooks,
            WebhookForgotten(
                at=now,
                request_id=request_id(scope),
                endpoint=name,
                event_id=event_id,
                was=state.value,
                status=found["status"],
            ),
        )
        await _json(send, 200, {**found, "forgotten": forgotten})

    async def replay(
        self, scope: Scope, send: Send, receiver: WebhookReceiver, name: str, event_id: str
    ) -> None:
        """``POST /admin/webhooks/NAME/events/ID/replay``: the upstream's answer."""
        outcome = await receiver.replay(name, event_id, request_id=request_id(scope))
        if outcome.result == "not_archived":
            raise AdminNotFound(
                what=f"an archived delivery of event {event_id!r} of webhook endpoint {name!r}"
            )
        if outcome.result == "in_flight":
            assert outcome.retry_after is not None
            raise AdminBadRequest(
                reason=f"event {event_id!r} is being processed (its lease runs out in "
                f"{math.ceil(outcome.retry_after)} s): replay it once its delivery has ended "
                "or its lease has run out, or it would run twice at once"
            )
        try:
            body, encoding = outcome.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(outcome.body).decode("ascii"), "base64"
        await _json(
            send,
            200,
            {
                "endpoint": name,
                "event_id": event_id,
                "result": outcome.result,
                "status": outcome.status,
                "headers": [list(pair) for pair in outcome.headers],
                "body": body,
                "body_encoding": encoding,
            },
        )

    async def outbox(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/admin/outbox/...`` (Rule 3)."""
        method = scope["method"]
        parts = _outbox_path(scope)
        runner = self.gateway.sender
        known = _OUTBOX_SHAPES.get((method, len(parts), parts[0], parts[-1]))
        if known is None and (method, len(parts), parts[0]) == ("GET", 2, "endpoints"):
            known = "endpoint"
        if known is None:
            raise AdminNotFound(what=f"{method} {scope['path']}")
        if runner is None:
            raise AdminNotFound(what="the outbox: this gateway has no [webhooks.send] table")
        await self._outbox_action(scope, receive, send, known, parts)

    async def _outbox_action(
        self, scope: Scope, receive: Receive, send: Send, known: str, parts: list[str]
    ) -> None:
        outbox = self._outbox()
        method = scope["method"]
        if method == "POST":
            await _body(receive)  # nothing to say but an empty object (Rule 3)
        if known == "endpoints":
            _query(scope)
            found = await _blocking(outbox.endpoints)
            await _json(send, 200, {"endpoints": [_endpoint(e) for e in found]})
        elif known == "stats":
            _query(scope)
            stats = await _blocking(outbox.stats)
            await _json(send, 200, {"endpoints": [s.as_dict() for s in stats]})
        elif known == "deliveries":
            await self.outbox_deliveries(scope, send)
        elif known in ("endpoint", "enable", "disable", "recover"):
            await self.outbox_endpoint(scope, send, known, _outbox_name(parts[1], "endpoint"))
        else:
            message_id = _outbox_name(parts[1], "message id")
            if known == "attempts":
                await self.outbox_attempts(scope, send, message_id)
            else:
                await self.outbox_resend(scope, send, message_id)

    async def outbox_endpoint(self, scope: Scope, send: Send, action: str, name: str) -> None:
        """One endpoint: shown, enabled, disabled, or its failed messages recovered."""
        outbox = self._outbox()
        since = None
        if action == "recover":
            given = _query(scope, "since").get("since")
            if given is None:
                raise AdminBadRequest(reason="since: expected a time (see surefoot.outbox.SINCE)")
            since = _moment(given, outbox.clock.now())
        else:
            _query(scope)
        call: Callable[[], Any] = {
            "endpoint": lambda: outbox.endpoint(name),
            "enable": lambda: outbox.enable(name),
            "disable": lambda: outbox.disable(name),
            "recover": lambda: outbox.recover(name, since or 0.0),
        }[action]
        try:
            result = await _blocking(call)
        except KeyError:
            raise AdminNotFound(what=f"outbox endpoint {name!r}") from None
        if action == "recover":
            await _json(send, 200, {"endpoint": name, "since": since, "requeued": result})
            return
        await _json(send, 200, _endpoint(result))

    async def outbox_deliveries(self, scope: Scope, send: Send) -> None:
        """``GET /admin/outbox/deliveries``: newest first, filtered, at most ``limit``."""
        from surefoot.outbox import DeliveryState

        outbox = self._outbox()
        query = _query(scope, "endpoint", "state", "message", "limit")
        limit = _limit(query.get("limit", "100"))
        states = [s.value for s in DeliveryState]
        state = query.get("state")
        if state is not None and state not in states:
            raise AdminBadRequest(
                reason=f"state: expected one of {', '.join(states)}, got {shown(state)}"
            )
        found = await _blocking(
            lambda: outbox.deliveries(
                endpoint=query.get("endpoint"),
                state=state,
                message_id=query.get("message"),
                limit=limit,
            )
        )
        await _json(send, 200, {"deliveries": [d.as_dict() for d in found]})

    async def outbox_attempts(self, scope: Scope, send: Send, message_id: str) -> None:
        """``GET /admin/outbox/messages/ID/attempts``: oldest first (404: no delivery)."""
        outbox = self._outbox()
        _query(scope)
        attempts = await _blocking(outbox.attempts, message_id)
        # No attempt yet: a message with a delivery waiting, or no such message.
        if not attempts and not await _blocking(
            lambda: outbox.deliveries(message_id=message_id, limit=1)
        ):
            raise AdminNotFound(what=f"outbox message {message_id!r}")
        await _json(
            send, 200, {"message_id": message_id, "attempts": [a.as_dict() for a in attempts]}
        )

    async def outbox_resend(self, scope: Scope, send: Send, message_id: str) -> None:
        """``POST /admin/outbox/messages/ID/resend?endpoint=NAME``: a delivered or failed
        delivery sent again now, on a fresh schedule (400 while it is pending or in flight)."""
        outbox = self._outbox()
        endpoint = _query(scope, "endpoint").get("endpoint")
        if endpoint is None:
            raise AdminBadRequest(reason="endpoint: expected ?endpoint=NAME")
        try:
            resent = await _blocking(outbox.resend, message_id, endpoint)
        except KeyError:  # no such message, or no delivery of it to the endpoint
            raise AdminNotFound(
                what=f"a delivery of outbox message {message_id!r} to endpoint {endpoint!r}"
            ) from None
        if not resent:
            found = await _blocking(
                lambda: outbox.deliveries(endpoint=endpoint, message_id=message_id, limit=1)
            )
            raise AdminBadRequest(
                reason=f"the delivery of {message_id!r} to {endpoint!r} is "
                f"{found[0].state.value}: it is still on its schedule; resend it once it "
                "is delivered or has failed"
            )
        await _json(send, 200, {"message_id": message_id, "endpoint": endpoint, "resent": True})

    # -- sagas (Rule 4) -----------------------------------------------------------------------

    def _saga_log(self) -> SagaLog:
        log = self.gateway.saga_log
        if log is None:
            raise AdminNotFound(what="the sagas: this gateway has no [sagas] table")
        return log

    async def sagas(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /admin/sagas``: the least recently changed first, filtered."""
        log = self._saga_log()
        query = _query(scope, "state", "name", "older_than", "limit")
        limit = _limit(query.get("limit", "100"), most=1000)
        older_than = None
        if "older_than" in query:
            found = _DURATION.fullmatch(query["older_than"])
            if found is None:
                raise AdminBadRequest(
                    reason="older_than: expected seconds or a duration (30s, 10m, 2h, 3d, 1w), "
                    f"got {shown(query['older_than'])}"
                )
            older_than = float(found.group(1)) * _UNITS[found.group(2)]
        try:
            runs = await _blocking(
                lambda: log.runs(
                    state=query.get("state"),
                    name=query.get("name"),
                    older_than=older_than,
                    limit=limit,
                )
            )
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        await _json(send, 200, {"sagas": [run.as_dict() for run in runs]})

    async def saga(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/admin/sagas/ID`` and ``/admin/sagas/ID/ACTION`` (Rule 4)."""
        method = scope["method"]
        parts = _outbox_path(scope)  # after /admin/sagas/ (the same depth)
        shape = (method, len(parts))
        if shape == ("GET", 1) and parts[0]:
            action = "show"
        elif shape == ("POST", 2) and parts[1] in _SAGA_ACTIONS:
            action = parts[1]
        else:
            raise AdminNotFound(what=f"{method} {scope['path']}")
        log = self._saga_log()
        saga_id = _outbox_name(parts[0], "saga id")
        if action == "show":
            _query(scope)
            timeline = await _blocking(log.timeline, saga_id)  # AdminNotFound: 404
            found = await _blocking(log.get, saga_id)
            if found is None:  # deleted between the two reads
                raise AdminNotFound(what=f"saga {saga_id!r}")
            entries = [entry.as_dict() for entry in timeline]
            await _json(send, 200, {**found.as_dict(), "timeline": entries})
            return
        _query(scope)
        data = await _body(receive, "reason", "actor")
        reason, actor = data.get("reason"), data.get("actor", "admin")
        if not isinstance(reason, str):
            raise AdminBadRequest(reason="reason: expected a string saying why")
        act = getattr(log, action)
        try:
            run = await _blocking(lambda: act(saga_id, reason=reason, actor=actor))
        except ValueError as exc:
            raise AdminBadRequest(reason=str(exc)) from None
        await _json(send, 200, run.as_dict())

    async def reconcile(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /admin/reconcile``: ``{"report": ...}``, the last sweep's report, null
        before the first sweep ended (a request never sweeps: a sweep may take long)."""
        _query(scope)
        sweeper = self.gateway.sweeper
        if sweeper is None:
            raise AdminNotFound(what="the sweeper: this gateway has no [sagas] table")
        report = sweeper.last
        await _json(send, 200, {"report": None if report is None else report.as_dict()})

    def _outbox(self) -> Outbox:
        runner = self.gateway.sender
        assert runner is not None  # checked by ``outbox``
        return runner.outbox


#: (method, number of path parts after /admin/outbox/, first part, last part) -> action.
_OUTBOX_SHAPES: dict[tuple[str, int, str, str], str] = {
    ("GET", 1, "endpoints", "endpoints"): "endpoints",
    ("GET", 1, "stats", "stats"): "stats",
    ("GET", 1, "deliveries", "deliveries"): "deliveries",
    ("POST", 3, "endpoints", "enable"): "enable",
    ("POST", 3, "endpoints", "disable"): "disable",
    ("POST", 3, "endpoints", "recover"): "recover",
    ("GET", 3, "messages", "attempts"): "attempts",
    ("POST", 3, "messages", "resend"): "resend",
}


async def _blocking(call: Callable[..., _T], *args: Any) -> _T:
    """An outbox call, in a thread (Rule 3); ``Outbox`` translates its database's
    failures, opening a connection included, into ``StoreUnavailable`` (503)."""
    return await asyncio.to_thread(call, *args)


def _outbox_path(scope: Scope) -> list[str]:
    """The raw path's parts after ``/admin/outbox/`` (still percent-encoded)."""
    raw: bytes = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    if len(raw) > 2048:
        raise AdminNotFound(what=f"{scope['method']} {scope['path']}")
    return raw.decode("latin-1").split("?")[0].split("/")[3:]


def _outbox_name(part: str, what: str) -> str:
    """An endpoint's name or a message id, percent-decoded from the path (Rule 3)."""
    try:
        text = unquote_to_bytes(part).decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not is_event_id(text):
        raise AdminBadRequest(
            reason=f"{what}: expected 1 to 255 printable ASCII characters "
            f"(percent-encoded in the path), got {shown(text or part)}"
        )
    return text


def _moment(text: str, now: float) -> float:
    """``since`` (``surefoot.outbox.parse_since``)."""
    from surefoot.outbox import SINCE, parse_since

    try:
        return parse_since(text, now)
    except ValueError:
        raise AdminBadRequest(reason=f"since: expected {SINCE}, got {shown(text)}") from None


def _endpoint(endpoint: Endpoint) -> dict[str, Any]:
    """An outbox endpoint as the admin API shows it: no secret, only how many; its URL
    masked like a store URL (a query parameter may carry a token)."""
    out = endpoint.as_dict()
    out["url"] = masked_url(endpoint.url)
    return out


def webhook_record(store_key: str, record: Record | None, now: float) -> dict[str, Any]:
    """What ``GET /admin/webhooks/NAME/events/ID`` and ``surefoot webhooks inspect`` show
    of an event's record: its state as of ``now`` (``absent`` when none)."""
    if record is None:
        return {"store_key": store_key, "state": State.ABSENT.value, "status": None}
    out = _record(store_key, record, now)
    out["state"] = classify(record, now).value
    out["lease_expires_in"] = (
        round(max(0.0, record.lease_expires_at - now), 3)
        if record.state is State.IN_FLIGHT
        else None
    )
    return out


def _webhook_event_path(scope: Scope) -> tuple[str, str, bool]:
    """NAME and ID of ``/admin/webhooks/NAME/events/ID[/replay]``, percent-decoded, and
    whether the path ends in ``/replay`` (Rule 2)."""
    raw: bytes = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    parts = raw.split(b"/")
    replay = len(parts) == 7 and parts[6] == b"replay"
    if len(parts) != 6 + replay or parts[4] != b"events" or len(raw) > 2048:
        raise AdminNotFound(what=f"{scope['method']} {scope['path']}")
    decoded: list[str] = []
    for what, part in (("endpoint name", parts[3]), ("event id", parts[5])):
        try:
            text = unquote_to_bytes(part).decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not is_event_id(text):
            raise AdminBadRequest(
                reason=f"{what}: expected 1 to 255 printable ASCII characters "
                f"(percent-encoded in the path), got {shown(text or part.decode('latin-1'))}"
            )
        decoded.append(text)
    return decoded[0], decoded[1], replay


_ROUTES: dict[tuple[str, str], Callable[..., Any]] = {
    ("GET", "/metrics"): AdminApp.metrics,
    ("GET", "/admin/config"): AdminApp.config,
    ("POST", "/admin/reload"): AdminApp.reload,
    ("GET", "/admin/limits"): AdminApp.limits,
    ("GET", "/admin/top"): AdminApp.top,
    ("GET", "/admin/rollouts"): AdminApp.rollouts,
    ("GET", "/admin/series"): AdminApp.series,
    ("GET", "/admin/alerts"): AdminApp.alerts,
    ("GET", "/admin/deprecations"): AdminApp.deprecations,
    ("GET", "/admin/versions"): AdminApp.versions,
    ("GET", "/admin/bans"): AdminApp.bans,
    ("POST", "/admin/bans"): AdminApp.bans,
    ("POST", "/admin/bans/remove"): AdminApp.bans,
    ("GET", "/admin/overrides"): AdminApp.overrides,
    ("POST", "/admin/overrides"): AdminApp.overrides,
    ("POST", "/admin/overrides/remove"): AdminApp.overrides,
    ("GET", "/admin/silences"): AdminApp.silences,
    ("POST", "/admin/silences"): AdminApp.silences,
    ("GET", "/admin/keys"): AdminApp.keys,
    ("GET", "/admin/unknown"): AdminApp.unknown,
    ("POST", "/admin/keys/resolve"): AdminApp.resolve,
    ("POST", "/admin/keys/release"): AdminApp.release,
    ("GET", "/admin/sagas"): AdminApp.sagas,
    ("GET", "/admin/reconcile"): AdminApp.reconcile,
}


def signal_supervisor() -> None:
    """Tell the parent ``surefoot serve`` process to reload every worker (SIGHUP)."""
    os.kill(os.getppid(), signal.SIGHUP)


def _age(record: Record, now: float) -> float:
    return round(max(0.0, now - (record.expires_at - record.ttl)), 3)


def _record(store_key: str, record: Record, now: float) -> dict[str, Any]:
    response = record.response
    return {
        "store_key": store_key,
        "state": record.state.value,
        "age": _age(record, now),
        "expires_in": round(max(0.0, record.expires_at - now), 3),
        "generation": record.generation,
        "status": response.status if response is not None else None,
    }


def _list(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list):
        raise ValueError(f"{name}: expected a list")
    return value


def _silence_times(body: Mapping[str, Any], now: float) -> tuple[float, float]:
    """A silence's start (``starts_at``, default now) and end: ``ends_at`` or
    ``duration`` (seconds or ``2h``) after the start; ``Silences.add`` bounds both."""
    if ("ends_at" in body) == ("duration" in body):
        raise ValueError("expected one of ends_at (unix seconds) and duration (e.g. 2h)")
    starts_at = _unix(body, "starts_at") if "starts_at" in body else now
    if "ends_at" in body:
        return starts_at, _unix(body, "ends_at")
    return starts_at, starts_at + duration_seconds(body["duration"])


def _unix(body: Mapping[str, Any], name: str) -> float:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected unix seconds")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{name}: expected a finite number of unix seconds")
    return seconds


def _limit(text: str, *, most: int = 10_000, name: str = "limit") -> int:
    """A ``limit`` parameter (or ``name``): a whole number from 1 to ``most`` (Rule 1)."""
    if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= most:
        raise AdminBadRequest(
            reason=f"{name}: expected a whole number from 1 to {most}, got {shown(text)}"
        )
    return int(text)


def _query(scope: Scope, *allowed: str) -> dict[str, str]:
    """The query parameters of an endpoint taking ``allowed`` (Rule 1)."""
    raw: bytes = scope.get("query_string", b"")
    try:
        pairs = parse_qsl(
            raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw), errors="strict"
        )
    except ValueError:  # raw non-ASCII, a pair without "=", or escapes that are not UTF-8
        raise AdminBadRequest(reason="expected a query string of name=value pairs") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise AdminBadRequest(reason=f"unknown parameter {shown(name)}; expected {expected}")
        if name in query:
            raise AdminBadRequest(reason=f"{name}: expected once, got it twice")
        if not 1 <= len(value) <= 1024 or not value.isprintable():
            raise AdminBadRequest(
                reason=f"{name}: expected 1 to 1024 printable characters, got {shown(value)}"
            )
        query[name] = value
    return query


async def _body(receive: Receive, *allowed: str) -> dict[str, Any]:
    """The JSON object of an endpoint taking the fields ``allowed`` (Rule 1)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise AdminBadRequest(reason="the request body was cut short")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_REQUEST:
            raise AdminBadRequest(reason=f"expected a body of at most {_MAX_REQUEST} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        data = json.loads(b"".join(chunks) or b"{}", parse_constant=refuse_constant)
    except ValueError:
        raise AdminBadRequest(reason="expected a JSON object") from None
    if not isinstance(data, dict):
        raise AdminBadRequest(reason="expected a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise AdminBadRequest(
            reason=f"unknown fields {shown(unknown)}; expected {', '.join(allowed)}"
        )
    return data


async def _json(send: Send, status: int, data: Any) -> None:
    await _send(send, status, json.dumps(data, separators=(",", ":")).encode(), _JSON)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: Brownout windows listed per route, at most.
_LISTED = 100


def _iso(moment: float | None) -> str | None:
    """``moment`` as RFC 3339 in UTC, to the second (None stays None)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
