"""``Gateway``: the ASGI app ``surefoot serve`` runs, composed from a policy file.

Per request: ``AbuseGuard`` (bans, allows, failure rules, anomalies: ``surefoot.abuse``)
-> ``ContractGuard`` (deprecations, brownouts, versions: ``surefoot.contracts``)
-> ``RateLimitMiddleware`` -> ``IdempotencyMiddleware`` -> ``ProxyApp`` -> the upstream,
wrapped in the gateway's own request loop (request id, access log, metrics). A ``POST`` on
a ``[[webhooks.receive]]`` path takes another way after the rate limiter::

    AbuseGuard ─► ContractGuard ─► RateLimitMiddleware ─┬─► IdempotencyMiddleware ─► ProxyApp
                                                        └─► WebhookReceiver ───────► ProxyApp

What the configuration decides is decided when the stack is built: a layer with nothing to
do (no rate-limit policy; no route or method idempotency protects; no webhook endpoint) is
left out of it, and the request loop matches the request's route once, for its metrics and
the proxy.

Rule 1: a request runs entirely on the *stack* (the composed layers) that was in force
        when it arrived; a reload builds a new stack and swaps it in one assignment, so
        no request ever sees half of each.
Rule 2: a reload keeps what carries state: a store whose URL is unchanged is the same
        object (its counters and records carry on, in memory too), and so are the
        upstream's connection pool, circuit breaker and load shedder while their
        settings are unchanged. Resources the new stack no longer uses are closed once
        the requests of the old stack have finished (or after ``shutdown_timeout``).
Rule 3: a new file that does not validate, or whose stack cannot be built, is refused as a
        whole (``ConfigRefused``); the configuration in force stays. The ``[server]`` fields
        ``surefoot serve`` reads once at start (``_STARTUP_ONLY``) are not applied by a
        reload: one that changes them logs a WARNING naming them. So is ``[webhooks.send]``:
        its outbox and delivery tasks (``_outbox.OutboxRunner``) run from start to shutdown;
        and so is ``[sagas]``: its saga log and sweeper (``_reconcile.Sweeper``, report
        only: the gateway has no application code to drive a saga with); and so are
        ``[top]`` (``_top.TopTracker``, an event hook and its flush task) and ``[alerts]``
        but its thresholds (``_watch.AlertWatcher``: samples, rules, notifications),
        whose tasks run from start to shutdown, the rules rebuilt at each reload; and so
        are ``[abuse]``'s ``enabled``, ``store``, ``log`` and ``sync_every``: its shared
        entries (``SharedBans``, the file's entries applied again at each reload), its
        anomaly detector (kept while ``[abuse.anomaly]`` is unchanged) and its sync task.
Rule 4: ``X-Request-Id`` is believed only from a trusted proxy (``server.trusted_proxies``);
        anyone else's is replaced, and every response carries the request's id.
Rule 5: the path is made canonical (``surefoot._asgi.canonicalize``) before anything
        matches a route, and that form is what the layers match and the upstream receives;
        a path that cannot be is answered 400 ``invalid_path`` and goes no further.
        Method-override headers are removed unless ``server.allow_method_override``.
Rule 6: a request whose credentials are ambiguous (a credential header twice, several
        credentials in one ``Authorization``) is answered 400 ``credentials_ambiguous``
        whatever its route, before any layer: the gateway must never count one client
        while the upstream authenticates another. With API keys in ``[[clients]]``, any
        other credential is rate limited as its address (``surefoot.identity``, Rule 4).
Rule 7: every layer sees the headers the upstream will see. The headers a request's
        ``Connection`` names are hop-by-hop (RFC 9110 section 7.6.1), and the proxy never
        forwards them, so they are removed before anything reads the request: a credential
        or a method override named there would otherwise pick a bucket or a route the
        upstream never hears of.
Rule 8: a verified webhook event reaches the upstream once per event id (``_Webhooks``
        says why the receiver sits where it does): a delivery that fails verification
        never reaches it, a duplicate is answered from the store, and the upstream gets
        the body's bytes as they were signed and the event id in ``Surefoot-Webhook-Id``.
Rule 9: temporary rate-limit overrides (``_override_board.SharedOverrides``) are applied to
        the stack's rate limiter in place (``update_policies``, nothing rebuilt) when a
        sync, every second, finds the set in force changed, and on the request path the
        moment one expires; a stack built by a reload starts with those in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from surefoot._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    adopt_request_id,
    canonicalize,
    route_method,
    send_problem,
)
from surefoot._routes import RouteTable
from surefoot.abuse import AbuseGuard, AbuseLog, AnomalyDetector, SharedBans
from surefoot.client import CircuitBreaker
from surefoot.clock import Clock, SystemClock
from surefoot.contracts import ContractGuard, Versioning, VersionPins
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    ConfigurationError,
    CredentialsAmbiguous,
    SurefootError,
)
from surefoot.events import Event, EventHook, LoggingHook, emit
from surefoot.gateway._abuse import AbuseControl
from surefoot.gateway._accesslog import AccessLog
from surefoot.gateway._config import GatewayConfig, load_config
from surefoot.gateway._events import ConfigRefused, ConfigReloaded, OutcomeResolved
from surefoot.gateway._head import ServerLimits
from surefoot.gateway._lookup import LookupResolver
from surefoot.gateway._metrics import GatewayMetrics
from surefoot.gateway._outbox import OutboxRunner
from surefoot.gateway._override_board import SYNC_EVERY, SharedOverrides
from surefoot.gateway._reconcile import Report, Sweeper, describe
from surefoot.gateway._schema import Route
from surefoot.gateway._shed import LoadShedder
from surefoot.gateway._top import TopTracker, top_lists
from surefoot.gateway._upstream import AppUpstream, HttpUpstream, HttpxUpstream, Upstream
from surefoot.gateway._watch import AlertWatcher
from surefoot.gateway.proxy import ProxyApp
from surefoot.idempotency import IdempotencyMiddleware, LeaseExpired, OutcomeUnknown, State
from surefoot.identity import Identity
from surefoot.metrics import uncounted
from surefoot.ratelimit import RateLimitMiddleware
from surefoot.storage import IdempotencyStore, RateLimitStore, StoreHealth, store_from_url
from surefoot.webhooks import WebhookEndpoint, WebhookReceiver

if TYPE_CHECKING:
    from surefoot.saga import SagaLog

__all__ = ["Gateway"]

#: The most unknown keys a gateway without lookups counts in one pass.
UNKNOWN_COUNTED = 1000
_log = logging.getLogger("surefoot.gateway")
#: ``[server]`` fields ``surefoot serve`` reads once, at start: the sockets, the processes,
#: the logging, and the HTTP server's limits (``ServerLimits``).
_STARTUP_ONLY = ("host", "port", "workers", "log_level", *(f.name for f in fields(ServerLimits)))
_UPSTREAM_APP_URL = "http://upstream"
#: The ``Connection`` options that name no other header.
_CONNECTION_OWN = frozenset({b"connection", b"close", b"keep-alive"})
#: A route template that matches every request: any method, any path.
_EVERY_REQUEST = re.compile(r"(?:\*\s+)?/(?:\*|\{[A-Za-z_][A-Za-z0-9_]*:path\})")
#: Scope key: the template of the gateway's route the request matched ("" for none).
_ROUTE = "surefoot.gateway.route"


@dataclass
class _Stack:
    """Everything one configuration composes; requests hold the stack they started on."""

    config: GatewayConfig
    digest: str
    app: ASGIApp
    proxy: ProxyApp
    idempotency_store: IdempotencyStore
    rate_limit_store: RateLimitStore
    resolver: LookupResolver | None
    routes: RouteTable[Route]
    identity: Identity
    allow_method_override: bool
    access_log: bool
    #: ``[server] test_traffic_header`` and ``test_traffic_from``: requests left out of
    #: the metrics (None: no test traffic).
    test_header: bytes | None = None
    test_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    #: Abuse protection (None: ``[abuse] enabled = false``).
    guard: AbuseGuard | None = None
    #: Deprecations and versions (None: no ``[routes.deprecation]`` and no ``[versions]``).
    contracts: ContractGuard | None = None
    resources: set[int] = field(default_factory=set)
    in_flight: int = 0
    #: Webhook endpoint name -> the store keeping its event ids (the admin API's).
    webhook_stores: dict[str, IdempotencyStore] = field(default_factory=dict)
    #: Webhook endpoint name -> its receiver (the admin API replays through it).
    webhook_receivers: dict[str, WebhookReceiver] = field(default_factory=dict)
    #: The rate limiter, which temporary overrides update in place (None: no policy).
    rate_limiter: RateLimitMiddleware | None = None


class Gateway:
    """The gateway as an ASGI app.

    Example:
        >>> path = "examples/gateway.toml"
        >>> gateway = Gateway(load_config(path), config_path=path)
        >>> uvicorn.run(gateway)  # without `surefoot serve`'s server bounds, workers and signals

    Args:
        config: the validated policy file.
        config_path: where to read it again on ``reload`` (None: reload needs a config).
        metrics: the Prometheus metrics (default: a private ``GatewayMetrics``).
        transport: the upstream's httpx transport (tests wrap it in a ``ChaosTransport``);
            default: a pooled connection to ``upstream.url``, or ``upstream.app`` called
            directly (lookups reach it through an ``ASGITransport``).
        clock: time for the stores' callers and events (tests inject ``ManualClock``).
        hooks: event hooks added after the logging hook and the metrics.
        workers: how many processes share the stores (rate-limit local fallback shares).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: str | None = None,
        metrics: GatewayMetrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] = (),
        workers: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.transport = transport
        self.clock = clock if clock is not None else SystemClock()
        self.workers = workers if workers is not None else config.root.server.workers
        self.access = AccessLog(clock=self.clock)
        self.generation = 0
        # Shared across reloads (Rule 2), keyed by what makes them equal.
        self._stores: dict[str, Any] = {}
        self._health: dict[int, StoreHealth] = {}
        self._clients: dict[tuple[Any, ...], httpx.AsyncClient] = {}
        self._pools: dict[tuple[Any, ...], HttpUpstream] = {}
        self._breakers: dict[tuple[Any, ...], CircuitBreaker] = {}
        self._shedders: dict[tuple[Any, ...], LoadShedder] = {}
        self._pins: dict[int, VersionPins] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciler: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._started = config.root.server  # what a reload cannot change (Rule 3)
        # [top] and [alerts]' stores: read once, kept in every stack's resources.
        root = config.root
        self._observed = (
            config.store_url(root.top.store),
            config.store_url(root.alerts.store),
            config.store_url(root.abuse.store),
        )
        self.top: TopTracker | None = None
        if root.top.enabled:
            board = self._store(self._observed[0], set())
            self.top = TopTracker(board, k=root.top.k, clock=self.clock, fresh=root.top.flush_every)
        self._top = root.top
        self._alerts_at_start = _started_alerts(config)
        tracking = (self.top,) if self.top is not None else ()
        # [abuse]: the entries in force and the anomaly detector are kept across reloads
        # (Rule 2); the store, the log and the sync interval are read once (Rule 3).
        self._abuse = root.abuse.model_dump(include=_ABUSE_AT_START)
        self.shared_bans: SharedBans | None = None
        self.detector: AnomalyDetector | None = None
        self.abuse_log = AbuseLog(root.abuse.log) if root.abuse.log else None
        if root.abuse.enabled:
            store = self._store(self._observed[2], set())
            self.shared_bans = SharedBans(store, clock=self.clock)
            self.shared_bans.configure(config.abuse.entries)
        if self.abuse_log is not None:
            tracking = (*tracking, self.abuse_log)
        self._unknown_changed = _Seen((OutcomeUnknown, LeaseExpired, OutcomeResolved))
        self._unknown_counted = 0
        self.hooks: tuple[EventHook, ...] = (
            LoggingHook(),
            self.metrics,
            *tracking,
            self._unknown_changed,
            *hooks,
        )
        # Temporary rate-limit overrides (Rule 9), applied by every stack built from now on.
        rl_url = config.store_url(root.rate_limit.store)
        self.overrides = SharedOverrides(
            self._store(rl_url, set()), clock=self.clock, hooks=self.hooks
        )
        self._overriding: asyncio.Task[None] | None = None
        self.stack = self._build(config, _digest_of(config_path))
        if self.stack.guard is not None:
            self.detector = self.stack.guard.detector
        self.watcher = AlertWatcher(
            self.metrics,
            self._store(self._observed[1], set()),
            config,
            clock=self.clock,
            refresh=self.refresh_top,
        )
        self._watching: asyncio.Task[None] | None = None
        self._guarding: asyncio.Task[None] | None = None
        # [webhooks.send]: read once, like the [server] fields a reload cannot change.
        self.sender: OutboxRunner | None = None
        if config.sender is not None:
            self.sender = OutboxRunner(config.sender, clock=self.clock, hooks=self.hooks)
        # [sagas]: read once too; the admin API's saga endpoints and the sweeper use it.
        self.saga_log: SagaLog | None = None
        self.sweeper: Sweeper | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._started_sagas = config.root.sagas
        if config.sagas is not None:
            from surefoot.saga import SagaLog

            self.saga_log = SagaLog(
                config.sagas.database, prefix=config.sagas.prefix, clock=self.clock
            )
            self.sweeper = Sweeper(
                saga_log=self.saga_log,
                store=self.stack.idempotency_store,
                outbox=self.sender.outbox if self.sender is not None else None,
                stuck_after=config.sagas.stuck_after,
                clock=self.clock,
                on_report=self._on_sweep,
            )

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not proxied

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.overrides.expire(self.clock.now()):  # an override ended (Rule 9)
            self.apply_overrides()
        stack = self.stack
        if stack.test_header is not None and _is_test(stack, scope):
            with uncounted():  # test traffic: served, left out of the metrics
                await self._handle(stack, scope, receive, send)
        else:
            await self._handle(stack, scope, receive, send)

    async def _handle(self, stack: _Stack, scope: Scope, receive: Receive, send: Send) -> None:
        rid = _clean_headers(scope, trusted=self._trusted(stack, scope))  # Rules 7 and 4
        # Before anything matches a route (Rule 5): the path in its one form, or a refusal.
        refused: SurefootError | None = canonicalize(
            scope, allow_method_override=stack.allow_method_override
        )
        route = ""
        if refused is None:
            # The one route match of the gateway's own: the metrics' label and the proxy's.
            matched = stack.routes.match(route_method(scope), scope["path"])
            if matched is not None:
                route = matched[0]
            scope[_ROUTE] = route
            try:
                stack.identity.credentials(scope)  # Rule 6, before any layer
            except CredentialsAmbiguous as exc:
                refused = exc
        stack.in_flight += 1
        metrics = self.metrics
        metrics.inflight(1)
        started = time.perf_counter()
        rid_field = (b"x-request-id", rid.encode())
        status = 500
        sent = 0
        replayed = answered = left = False

        async def received() -> Message:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect":
                left = True
            return message

        async def tracked(message: Message) -> None:
            nonlocal status, sent, replayed, answered
            if message["type"] == "http.response.start":
                answered = True
                status = message["status"]
                headers = message.get("headers", ())
                replayed = (b"idempotent-replayed", b"true") in headers
                for name, _ in headers:
                    if name == b"x-request-id":
                        break
                else:
                    message = {**message, "headers": [*headers, rid_field]}
            else:
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if refused is None:
                await stack.app(scope, received, tracked)
                if left and not answered:
                    status = 499  # the client left before any answer (NGINX's code for it)
            else:
                await send_problem(tracked, refused, request_id=rid, base=DEFAULT_PROBLEM_BASE)
        finally:
            stack.in_flight -= 1
            elapsed = time.perf_counter() - started
            label = route or "other"
            metrics.inflight(-1)
            metrics.observe_request(
                route=label, method=scope["method"], status=status, seconds=elapsed
            )
            if stack.access_log and self.access.enabled:
                client = scope.get("client")
                self.access.log(
                    request_id=rid,
                    method=scope["method"],
                    path=scope["path"],
                    route=label,
                    status=status,
                    duration=elapsed,
                    client=client[0] if client else None,
                    bytes_sent=sent,
                    replayed=replayed,
                )

    @staticmethod
    def _trusted(stack: _Stack, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not stack.identity.trusted:
            return False
        return stack.identity.is_trusted(client[0])

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the reconciler and the outbox's workers, and report the breaker's state.

        Raises:
            ConfigurationError: ``[webhooks.send]``'s database cannot be reached.
        """
        breaker = self.stack.proxy.breaker
        state = breaker.state.value if breaker is not None else "disabled"
        self.metrics.set_breaker_state("upstream", state)
        if self.sender is not None:
            await self.sender.start()
        self._restart_reconciler()
        if self._watching is None:
            every = self.stack.config.root.alerts.evaluate_every
            self._watching = asyncio.ensure_future(self.watcher.run(every))
        if self.shared_bans is not None and self._guarding is None:
            await self.sync_abuse()  # the entries in force before the first request
            self._guarding = asyncio.ensure_future(self._guard(self._abuse["sync_every"]))
        if self.top is not None and self._flushing is None:
            self._flushing = asyncio.ensure_future(self.top.run(self._top.flush_every))
        if self._overriding is None:
            await self.sync_overrides()  # the overrides in force before the first request
            self._overriding = asyncio.ensure_future(self._sync_overrides_every(SYNC_EVERY))
        if self.sweeper is not None and self._sweeping is None:
            assert self._started_sagas is not None
            interval = self._started_sagas.reconcile_interval
            self._sweeping = asyncio.ensure_future(self._sweep(interval))

    async def _sweep(self, interval: float) -> None:
        """Sweep every ``interval`` seconds (``[sagas]``), one WARNING line per finding;
        a sweep that fails is logged and the next one runs."""
        assert self.sweeper is not None
        while True:
            try:
                await self.sweeper.sweep_once()
            except Exception:  # pragma: no cover - sweep_once reports its parts' failures
                _log.warning("sweep failed; retrying later", exc_info=True)
            await asyncio.sleep(interval)

    async def _guard(self, every: float) -> None:
        """``sync_abuse`` every ``every`` seconds, and the anomaly detector's evaluation
        as soon as one of its steps ended, until cancelled."""
        evaluated = -1
        while True:
            await asyncio.sleep(every)
            await self.sync_abuse()
            guard = self.stack.guard
            if guard is not None and guard.detector is not None:
                bucket = int(self.clock.now() // guard.detector.settings.step)
                if bucket != evaluated:  # a step ended: evaluate it now, not a step late
                    evaluated = bucket
                    try:
                        await self.evaluate_anomalies()
                    except Exception:  # pragma: no cover - evaluate logs its store's failures
                        _log.warning("abuse: evaluating anomalies failed", exc_info=True)

    async def sync_abuse(self) -> None:
        """Read the entries other workers and hosts changed (``SharedBans.sync``); a store
        that fails keeps the entries this worker has."""
        if self.shared_bans is None:
            return
        try:
            await self.shared_bans.sync()
        except Exception as exc:
            _log.warning("abuse: reading the entries failed: %s", type(exc).__name__)

    async def _sync_overrides_every(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.sync_overrides()

    async def sync_overrides(self) -> None:
        """Read the temporary overrides and apply them if the set in force changed (Rule 9);
        a store that fails keeps those in force here."""
        if await self.overrides.refresh():
            self.apply_overrides()

    def apply_overrides(self) -> None:
        """Put the overrides in force on the stack's rate limiter, in place (Rule 9)."""
        limiter = self.stack.rate_limiter
        if limiter is not None:
            limiter.update_policies(self.overrides.policies(self.stack.config))

    def refresh_abuse(self) -> None:
        """Count the entries in force (``surefoot_abuse_entries``) and the clients in
        anomaly (a scrape calls it: the counts are computed then, and kept until an
        entry changes or expires)."""
        if self.shared_bans is not None:
            self.metrics.set_abuse_entries(self.shared_bans.counts(self.clock.now()))
        guard = self.stack.guard
        if guard is not None and guard.detector is not None:
            self.metrics.set_anomalous(len(guard.detector.anomalous()))

    async def evaluate_anomalies(self) -> None:
        """Close the anomaly detector's steps up to now and act on what changed."""
        guard = self.stack.guard
        if guard is None or guard.detector is None:
            return
        await guard.evaluate()

    def abuse_control(self) -> AbuseControl | None:
        """Bans and allows for an operator (the admin API), None if ``[abuse]`` is off."""
        if self.shared_bans is None:
            return None
        return AbuseControl(self.shared_bans, self.stack.config, self.hooks)

    def _on_sweep(self, report: Report) -> None:
        for line in describe(report):
            _log.warning("%s", line)
        if "sagas" in report.parts and not any(e.startswith("sagas:") for e in report.errors):
            self.metrics.set_saga_counts(report.saga_counts, now=report.at)

    def _restart_reconciler(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            self._reconciler = None
        resolver = self.stack.resolver
        interval = self.stack.config.root.idempotency.reconcile_interval
        if resolver is not None:
            self._reconciler = asyncio.ensure_future(resolver.run(interval))
        elif not _protects_nothing(self.stack.config):
            self._reconciler = asyncio.ensure_future(self._count_unknown(interval))

    async def _count_unknown(self, interval: float) -> None:
        """``count_unknown`` every ``interval`` seconds (jittered) until cancelled."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            await self.count_unknown()

    async def count_unknown(self) -> None:
        """Without lookups nothing settles unknown keys but an operator: count them all the
        same (``surefoot_idempotency_unknown_keys``, which ``SurefootOutcomesUnknown``
        reads), at most ``UNKNOWN_COUNTED``, after this process saw an outcome become
        unknown or be settled, and while the last count was not 0 (the count scans the
        store's records)."""
        if not (self._unknown_changed.seen or self._unknown_counted):
            return  # a scan of the store only while there is something to count
        self._unknown_changed.seen = False
        try:
            found = await self.stack.idempotency_store.records(
                self.clock.now(), state=State.UNKNOWN, limit=UNKNOWN_COUNTED
            )
        except Exception as exc:  # the store is down: counted next time
            self._unknown_changed.seen = True
            _log.warning("counting unknown keys failed: %s", type(exc).__name__)
            return
        self._unknown_counted = len(found)
        self.metrics.set_unknown_keys(self._unknown_counted)

    async def aclose(self) -> None:
        """Stop the sweeper, the reconciler and the outbox's workers; close every pool and
        store."""
        if self._sweeping is not None:  # first: a sweep reads the outbox
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
            self._sweeping = None
        tasks = (self._flushing, self._watching, self._guarding, self._overriding)
        for task in tasks:  # before the stores close
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._flushing = self._watching = self._guarding = self._overriding = None
        if self.abuse_log is not None:
            self.abuse_log.close()
        await self.watcher.aclose()
        if self.sender is not None:
            await self.sender.aclose()
        if self.saga_log is not None:
            await asyncio.to_thread(self.saga_log.close)
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
            self._reconciler = None
        for client in self._clients.values():
            await client.aclose()
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
        for store in self._stores.values():
            await store.aclose()
        self._clients.clear()
        self._stores.clear()

    async def refresh_top(self) -> None:
        """Read the top lists over the last 5 minutes into the ``surefoot_top_requests``
        series, and for each client refused, its refusals over the day (the baseline of
        ``SurefootClientRefusalsSpike``) (a scrape and each evaluation of the alerts call
        it; the store is read at most once every ``[top] flush_every``, the tracker's
        reads being kept that long); a store that fails leaves the last lists in place."""
        if self.top is None:
            return
        config = self.stack.config
        policies = [policy.name for policy in config.rate_limit_policies]
        rows = []
        try:
            for name, policy in top_lists(policies):
                merged = await self.top.read(name, policy, "5m")
                found = merged.top(self._top.exported)
                day: dict[str, float] = {}
                floor = 0.0
                if name == "refused" and found:
                    summary = await self.top.read(name, policy, "24h")
                    day, floor = {c.item: c.count for c in summary.top()}, summary.floor()
                for counted in found:
                    principal = counted.item.partition(" ")[0]
                    client = config.principals.get(principal, principal)
                    labels = (name, policy, counted.item, client)
                    rows.append(((*labels, "5m"), counted.count))
                    if name == "refused":  # a client not held has at most the floor
                        usual = max(counted.count, day.get(counted.item, floor))
                        rows.append(((*labels, "24h"), usual))
        except Exception as exc:
            _log.warning("top offenders: reading the store failed: %s", type(exc).__name__)
            return
        self.metrics.set_top(rows)

    # -- reloading ---------------------------------------------------------------------------

    async def reload(self, config: GatewayConfig | None = None) -> bool:
        """Put a new configuration in force (default: read ``config_path`` again).

        Returns False when the file is unchanged (nothing to do), True once the new
        configuration is in force.

        Raises:
            ConfigurationError: the new configuration is invalid or cannot be built; the
                one in force stays.
        """
        async with self._reload_lock:
            source = self.config_path or (config.source if config else "<config>")
            digest = _digest_of(self.config_path) if config is None else ""
            try:
                if config is None:
                    if self.config_path is None:
                        raise ConfigurationError("reload: this gateway has no config_path")
                    if digest == self.stack.digest:
                        return False
                    config = load_config(self.config_path)
                stack = self._build(config, digest)
            except ConfigurationError as exc:
                emit(
                    self.hooks,
                    ConfigRefused(
                        at=self.clock.now(), request_id="", source=source, error=str(exc)
                    ),
                )
                raise
            old, self.stack = self.stack, stack
            rl_url = config.store_url(config.root.rate_limit.store)
            self.overrides.store = self._store(rl_url, stack.resources)
            self.generation += 1
            if self.shared_bans is not None:
                self.shared_bans.configure(config.abuse.entries)
            if stack.guard is not None:
                self.detector = stack.guard.detector
            self._restart_reconciler()
            server = stack.config.root.server
            unapplied = [
                f"server.{name}"
                for name in _STARTUP_ONLY
                if getattr(server, name) != getattr(self._started, name)
            ]
            if config.sender != (self.sender.sender if self.sender is not None else None):
                unapplied.append("webhooks.send")
            if config.root.sagas != self._started_sagas:
                unapplied.append("sagas")
            if config.root.top != self._top:
                unapplied.append("top")
            if _started_alerts(config) != self._alerts_at_start:
                unapplied.append("alerts")
            if config.root.abuse.model_dump(include=_ABUSE_AT_START) != self._abuse:
                unapplied.append("abuse")
            self.watcher.reconfigure(config)
            if self.sweeper is not None:
                self.sweeper.store = stack.idempotency_store
            if unapplied:
                _log.warning(
                    "reload: %s changed but take effect at start only: not applied until "
                    "surefoot serve restarts",
                    ", ".join(unapplied),
                )
            emit(
                self.hooks,
                ConfigReloaded(
                    at=self.clock.now(), request_id="", source=source, generation=self.generation
                ),
            )
            task = asyncio.ensure_future(self._retire(old))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True

    async def _retire(self, old: _Stack) -> None:
        """Close what only ``old`` used, once its requests are done (Rule 2)."""
        deadline = time.monotonic() + old.config.root.server.shutdown_timeout
        while old.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.05)
        kept = self.stack.resources
        for key, client in list(self._clients.items()):
            if id(client) in old.resources and id(client) not in kept:
                del self._clients[key]
                await client.aclose()
        for key, pool in list(self._pools.items()):
            if id(pool) in old.resources and id(pool) not in kept:
                del self._pools[key]
                await pool.aclose()
        for url, store in list(self._stores.items()):
            if id(store) in old.resources and id(store) not in kept:
                del self._stores[url]
                await store.aclose()

    # -- building ----------------------------------------------------------------------------

    def _store(self, url: str, resources: set[int]) -> Any:
        store = self._stores.get(url)
        if store is None:
            store = self.metrics.instrument_store(store_from_url(url), name=_store_label(url))
            self._stores[url] = store
        resources.add(id(store))
        return store

    def _build(self, config: GatewayConfig, digest: str) -> _Stack:
        root = config.root
        resources: set[int] = set()
        identity = Identity(
            credential_headers=root.identity.credential_headers,
            trusted_proxies=root.server.trusted_proxies,
            forwarded_header=root.server.forwarded_header,
            # Listed API keys: any other credential is rate limited as its address.
            known_credentials=config.api_keys or None,
        )
        idem_store = self._store(config.store_url(root.idempotency.store), resources)
        rl_store = self._store(config.store_url(root.rate_limit.store), resources)
        for url in self._observed:
            self._store(url, resources)
        client, base_url = self._client(config, resources)
        upstream_client = self._upstream(config, client, base_url, resources)
        upstream = root.upstream
        breaker = None
        if upstream.breaker is not None:
            key = (base_url, *upstream.breaker.model_dump().values())
            breaker = self._breakers.get(key)
            if breaker is None:
                options = upstream.breaker.model_dump()
                breaker = CircuitBreaker(
                    name="upstream", clock=self.clock, hooks=self.hooks, **options
                )
                self._breakers = {key: breaker}
        shedder = None
        if upstream.concurrency is not None:
            c = upstream.concurrency
            key = (c.limit, c.critical_share)
            shedder = self._shedders.get(key)
            if shedder is None:
                shedder = LoadShedder(limit=c.limit, critical_share=c.critical_share)
                self._shedders = {key: shedder}
        routes: RouteTable[Route] = RouteTable(config.route_options.items())
        critical_routes = {r.match for r in root.routes if r.critical}
        critical_principals = config.critical_principals

        def route_of(scope: Scope) -> str:
            route: str | None = scope.get(_ROUTE)  # matched once in handle
            if route is None:
                matched = routes.match(route_method(scope), scope["path"])
                route = matched[0] if matched is not None else ""
            return route

        def critical(scope: Scope) -> bool:
            if route_of(scope) in critical_routes:
                return True
            return bool(critical_principals) and identity(scope) in critical_principals

        stack_ref: list[_Stack] = []
        proxy = ProxyApp(
            upstream=upstream_client,
            name="upstream",
            breaker=breaker,
            shedder=shedder,
            shed_retry_after=upstream.concurrency.retry_after if upstream.concurrency else 1,
            critical=critical,
            route_of=route_of,
            timeout=upstream.total_timeout,
            route_timeouts={r.match: r.timeout for r in root.routes if r.timeout is not None},
            trusted=lambda scope: self._trusted(stack_ref[0], scope),
            forward_idempotency_key=upstream.forward_idempotency_key,
            key_headers={config.idempotency_policy.header_name}
            | {p.header_name for p in config.idempotency_routes.values() if p is not None},
            hooks=self.hooks,
            observe=lambda outcome, seconds: self.metrics.observe_upstream(
                outcome=outcome, seconds=seconds
            ),
        )
        resolver = None
        if config.lookups:
            policies = [config.idempotency_policy] + [
                p for p in config.idempotency_routes.values() if p is not None
            ]
            resolver = LookupResolver(
                store=idem_store,
                client=client,
                base_url=base_url,
                lookups=config.lookups,
                key_header=config.idempotency_policy.header,
                body_field=config.idempotency_policy.body_field,
                ttl=max(p.ttl for p in policies),
                not_found_after=upstream.total_timeout,
                clock=self.clock,
                hooks=self.hooks,
                on_pending=self.metrics.set_unknown_keys,
            )
        # With lookups, the reconciler settles unknown keys every reconcile_interval: a
        # retry sooner finds them unknown still. Without, an operator does: the
        # middleware's default.
        unknown_retry_after = 5.0 if resolver is None else root.idempotency.reconcile_interval
        app: ASGIApp = proxy
        if not _protects_nothing(config):  # else every request would pass it untouched
            app = IdempotencyMiddleware(
                proxy,
                store=idem_store,
                policy=config.idempotency_policy,
                routes=config.idempotency_routes,
                principal=identity,
                clock=self.clock,
                hooks=self.hooks,
                max_request_body=root.server.max_request_body,
                store_health=self._health_of(idem_store),
                resolver=resolver,
                allow_method_override=root.server.allow_method_override,
                outcome_unknown_retry_after=unknown_retry_after,
            )
        receivers, webhook_stores, by_name = self._receivers(config, proxy, resources)
        if receivers:
            app = _Webhooks(app, receivers)
        rate_limiter = None
        if config.rate_limit_policies:
            tiers = config.tiers
            app = rate_limiter = RateLimitMiddleware(
                app,
                store=rl_store,
                policies=self.overrides.applied(config),
                principal=identity,
                tier=(lambda scope, principal: tiers.get(principal)) if tiers else None,
                headers=root.rate_limit.headers,
                legacy_headers=root.rate_limit.legacy_headers,
                clock=self.clock,
                hooks=self.hooks,
                fallback_workers=self.workers,
                store_health=self._health_of(rl_store),
                allow_method_override=root.server.allow_method_override,
            )
        contracts = None
        if config.lifecycles or config.versions is not None:
            app = contracts = self._contracts(app, config, identity, route_of, resources)
        guard = None
        if self.shared_bans is not None:
            abuse = config.abuse
            detector = self.detector
            if abuse.anomaly is None:
                detector = None
            elif detector is None or detector.settings != abuse.anomaly:
                detector = AnomalyDetector(abuse.anomaly)  # new settings: learned anew
            abuse_store = self._store(self._observed[2], resources)
            app = guard = AbuseGuard(
                app,
                shared=self.shared_bans,
                identity=identity,
                rules=abuse.rules,
                counters=abuse_store,
                detector=detector,
                anomaly=abuse.response,
                challenge=abuse.challenge,
                clock=self.clock,
                hooks=self.hooks,
                workers=self.workers,
                privacy=root.abuse.addresses,
                secret=config.abuse_secret,
                max_body=min(root.server.max_request_body, _ACCOUNT_BODY),
                problem_base=DEFAULT_PROBLEM_BASE,
            )
        stack = _Stack(
            config=config,
            digest=digest,
            app=app,
            guard=guard,
            contracts=contracts,
            proxy=proxy,
            idempotency_store=idem_store,
            rate_limit_store=rl_store,
            resolver=resolver,
            routes=routes,
            identity=identity,
            allow_method_override=root.server.allow_method_override,
            access_log=root.server.access_log,
            test_header=(
                None
                if root.server.test_traffic_header is None
                else root.server.test_traffic_header.encode()
            ),
            test_networks=tuple(
                ip_network(net, strict=False) for net in root.server.test_traffic_from
            ),
            resources=resources,
            webhook_stores=webhook_stores,
            webhook_receivers=by_name,
            rate_limiter=rate_limiter,
        )
        stack_ref.append(stack)
        return stack

    def _contracts(
        self,
        app: ASGIApp,
        config: GatewayConfig,
        identity: Identity,
        route_of: Callable[[Scope], str],
        resources: set[int],
    ) -> ContractGuard:
        """The ``ContractGuard`` of ``[routes.deprecation]`` and ``[versions]``, in front of
        the rate limiter: nothing is counted for a request it answers."""
        principals = config.principals
        critical = config.critical_principals
        versioning = None
        table = config.root.versions
        if config.versions is not None and table is not None:
            pins = None
            if table.pin == "first_used":
                store = self._store(config.store_url(table.store), resources)
                pins = self._pins.get(id(store))
                if pins is None:  # kept across reloads: a pin read is a pin known
                    pins = self._pins[id(store)] = VersionPins(store)
            versioning = Versioning(
                config.versions,
                header=table.header,
                forward_header=table.forward_header,
                pins=pins,
                file_pins=config.client_versions,
            )
        return ContractGuard(
            app,
            lifecycles=config.lifecycles,
            route_of=route_of,
            client_of=lambda scope: principals.get(identity(scope)),
            principal_of=identity.rate_limit_principal,
            critical_of=lambda scope: bool(critical) and identity(scope) in critical,
            versioning=versioning,
            clock=self.clock,
            hooks=self.hooks,
            problem_base=DEFAULT_PROBLEM_BASE,
        )

    def _receivers(
        self, config: GatewayConfig, proxy: ProxyApp, resources: set[int]
    ) -> tuple[dict[str, WebhookReceiver], dict[str, IdempotencyStore], dict[str, WebhookReceiver]]:
        """One ``WebhookReceiver`` per store the endpoints use, in front of the proxy (see
        ``_Webhooks``): webhook path -> its receiver, endpoint name -> its store, and
        endpoint name -> its receiver."""
        by_store: dict[str, dict[str, WebhookEndpoint]] = {}
        for webhook in config.webhooks.values():
            by_store.setdefault(webhook.store, {})[webhook.path] = webhook.endpoint
        receivers: dict[str, WebhookReceiver] = {}
        stores: dict[str, IdempotencyStore] = {}
        by_name: dict[str, WebhookReceiver] = {}
        for name, endpoints in by_store.items():
            store = self._store(config.store_url(name), resources)
            receiver = WebhookReceiver(
                proxy,
                endpoints=endpoints,
                store=store,
                clock=self.clock,
                hooks=self.hooks,  # the gateway's: logged, and counted by its metrics
                problem_base=DEFAULT_PROBLEM_BASE,
                store_health=self._health_of(store),
            )
            for path, endpoint in endpoints.items():
                receivers[path] = receiver
                stores[endpoint.name] = store
                by_name[endpoint.name] = receiver
        return receivers, stores, by_name

    def _health_of(self, store: object) -> StoreHealth:
        health = self._health.get(id(store))
        if health is None:
            health = self._health[id(store)] = StoreHealth()
        return health

    def _upstream(
        self,
        config: GatewayConfig,
        client: httpx.AsyncClient,
        base_url: str,
        resources: set[int],
    ) -> Upstream:
        """The proxy's way to the upstream: an injected transport, the app, or the URL's pool."""
        upstream = config.root.upstream
        if self.transport is not None:
            return HttpxUpstream(client, base_url)
        if upstream.app is not None:
            return AppUpstream(_import_app(upstream.app))
        assert upstream.url is not None  # the schema wants exactly one of url and app
        key = (
            upstream.url,
            upstream.connect_timeout,
            upstream.read_timeout,
            upstream.max_connections,
        )
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = HttpUpstream(
                upstream.url,
                connect_timeout=upstream.connect_timeout,
                read_timeout=upstream.read_timeout,
                max_connections=upstream.max_connections,
            )
        resources.add(id(pool))
        return pool

    def _client(self, config: GatewayConfig, resources: set[int]) -> tuple[httpx.AsyncClient, str]:
        """An httpx client to the upstream: lookups, and the proxy for an injected transport."""
        upstream = config.root.upstream
        key = (
            upstream.url,
            upstream.app,
            upstream.connect_timeout,
            upstream.read_timeout,
            upstream.max_connections,
        )
        base_url = upstream.url if upstream.url is not None else _UPSTREAM_APP_URL
        client = self._clients.get(key)
        if client is None:
            transport = self.transport
            if transport is None and upstream.app is not None:
                transport = httpx.ASGITransport(
                    app=_import_app(upstream.app), raise_app_exceptions=False
                )
            client = httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(
                    upstream.read_timeout,
                    connect=upstream.connect_timeout,
                    pool=upstream.connect_timeout,
                ),
                limits=httpx.Limits(
                    max_connections=upstream.max_connections,
                    max_keepalive_connections=upstream.max_connections,
                ),
                follow_redirects=False,
                trust_env=False,
            )
            self._clients[key] = client
        resources.add(id(client))
        return client, base_url


class _Webhooks:
    """Sends a ``POST`` on a webhook path to its ``WebhookReceiver``, anything else on.

    Where the receiver sits, so that a verified event reaches the upstream exactly once:

    - *Behind the rate limiter*, as every route is: a flood of deliveries, forged or a
      sender's burst, is limited before any signature is checked or anything stored, by
      the policies whose ``routes`` match the webhook path (``exempt`` it to let a sender
      through unlimited). A 429 stores nothing, and the sender delivers again later.
    - *Beside the gateway's idempotency layer, not behind it*: the receiver runs each
      event once by its own idempotency layer, keyed by the event id and kept for the
      endpoint's retention. Behind the gateway's, a delivery would need an
      ``Idempotency-Key`` no sender sends (400 for every event), or be stored twice under
      rules that disagree (``on_server_error = "unknown"`` would hold an event the
      receiver releases for the sender's retry).
    - *In front of the proxy*, the only way to the upstream: what the receiver refuses
      (a bad signature, an expired timestamp, a duplicate) is answered without reaching
      it; what the proxy could not deliver (upstream unreachable, breaker open, shed) is
      marked not executed, and the receiver releases the event for the sender's retry.

    The path was made canonical before (``Gateway.handle``, Rule 5), so an exact match
    is the receiver's own; a ``POST`` whose allowed method override names another method
    is not a delivery and goes on with the rest.
    """

    __slots__ = ("app", "receivers")

    def __init__(self, app: ASGIApp, receivers: dict[str, WebhookReceiver]) -> None:
        self.app = app
        self.receivers = receivers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_method(scope) == "POST":
            receiver = self.receivers.get(scope["path"])
            if receiver is not None:
                await receiver(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Seen:
    """An event hook that notes that an event of ``kinds`` happened (``seen``)."""

    def __init__(self, kinds: tuple[type[Event], ...]) -> None:
        self.kinds = kinds
        self.seen = False

    def wants(self, event_type: type[Event]) -> bool:
        return event_type in self.kinds

    def __call__(self, event: Event, /) -> None:
        self.seen = True


def _started_alerts(config: GatewayConfig) -> dict[str, Any]:
    """What of ``[alerts]`` takes effect at start only (its thresholds are reloaded)."""
    return config.root.alerts.model_dump(include=_ALERTS_AT_START) | {
        "webhook": config.alert_webhook
    }


#: What of ``[abuse]`` takes effect at start only (entries, rules and anomalies reload).
_ABUSE_AT_START = {"enabled", "store", "log", "sync_every"}
#: The most bytes of a body read for the account a login names.
_ACCOUNT_BODY = 64 * 1024

_ALERTS_AT_START = {
    "evaluate",
    "evaluate_every",
    "group_by",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "send_resolved",
    "store",
}


def _protects_nothing(config: GatewayConfig) -> bool:
    """Whether the idempotency layer would pass every request through untouched: no policy
    names a method, or a route matching every request leaves it unprotected before any
    route protects one (the layer is then left out of the stack)."""
    routes = config.idempotency_routes
    policies = [config.idempotency_policy, *(p for p in routes.values() if p is not None)]
    if not any(policy.methods for policy in policies):
        return True
    for template, policy in routes.items():
        if policy is not None:
            return False
        if _EVERY_REQUEST.fullmatch(template.strip()):
            return True
    return False


def _is_test(stack: _Stack, scope: Scope) -> bool:
    """A test request: it carries the test header and comes from a test address (through
    trusted proxies only)."""
    if not any(name == stack.test_header for name, _ in scope["headers"]):
        return False
    try:
        address = ip_address(stack.identity.client_address(scope))
    except ValueError:
        return False
    return any(address in network for network in stack.test_networks)


def _clean_headers(scope: Scope, *, trusted: bool) -> str:
    """Remove the headers the request's ``Connection`` names (Rule 7) and, from a caller
    that is not a trusted proxy, ``X-Request-Id`` (Rule 4), in one pass over the headers;
    the request's id (``surefoot._asgi.request_id``) is set and returned."""
    headers = scope["headers"]
    named: set[bytes] = set()
    given: bytes | None = None
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
        elif name == b"x-request-id" and given is None:
            given = value
    named -= _CONNECTION_OWN
    if given is not None and (not trusted or b"x-request-id" in named):
        named.add(b"x-request-id")
        given = None
    if named:
        scope["headers"] = [(n, v) for n, v in headers if n not in named]
    return adopt_request_id(scope, given)


def _import_app(spec: str) -> Callable[..., Awaitable[None]]:
    module_name, _, attribute = spec.partition(":")
    # Like uvicorn: the app is imported from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # an app module that fails while it loads too: say how
        raise ConfigurationError(
            f"upstream.app: cannot import {spec!r} ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(target):
        raise ConfigurationError(f"upstream.app: expected an ASGI app, {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _digest_of(path: str | None) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _store_label(url: str) -> str:
    return urlsplit(url).scheme or "store"
