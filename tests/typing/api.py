"""Type-checked (by mypy, via scripts/check), never run: the public API as users write it."""

from __future__ import annotations

import sqlite3

from redis.asyncio import Redis
from starlette.applications import Starlette

from surefoot.clock import Clock, SystemClock
from surefoot.events import Event, LoggingHook
from surefoot.idempotency import (
    IdempotencyMiddleware,
    IdempotencyPolicy,
    KeyReserved,
    SyncIdempotencyStore,
    TransactionalKeys,
)
from surefoot.identity import Identity
from surefoot.metrics import PrometheusMetrics
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy, SyncRateLimitStore
from surefoot.storage import (
    IdempotencyStore,
    MemoryStore,
    RateLimitStore,
    SqliteStore,
    StoreHealth,
    SyncMemoryStore,
    SyncSqliteStore,
    store_from_url,
    sync_store_from_url,
)
from surefoot.storage.postgres import PostgresStore, SyncPostgresStore
from surefoot.storage.redis import RedisStore, SyncRedisStore
from surefoot.testing import CapturedEvents, ManualClock
from surefoot.webhooks import (
    GitHub,
    Hmac,
    Ordering,
    ReceivedWebhook,
    StandardWebhooks,
    Stripe,
    WebhookEndpoint,
    WebhookReceiver,
    WebhookRefused,
    webhook_store_key,
)

app = Starlette()
store: IdempotencyStore = store_from_url("sqlite:///idempotency.db")
wrapped = IdempotencyMiddleware(app, store=store)
wrapped = IdempotencyMiddleware(
    app, store=MemoryStore(), policy=IdempotencyPolicy(ttl=7 * 86400, lease=30)
)
sqlite_store: IdempotencyStore = SqliteStore("x.db", synchronous="FULL")
clock: Clock = ManualClock()
real: Clock = SystemClock()


def on_event(event: Event) -> None:
    if isinstance(event, KeyReserved):
        print(event.generation, event.store_key)


wrapped = IdempotencyMiddleware(
    app, store=sqlite_store, hooks=[on_event, LoggingHook()], clock=clock
)
# surefoot's hooks share EventHook as their base: a list of them needs no annotation.
own_hooks = [LoggingHook(), PrometheusMetrics(), CapturedEvents()]
wrapped = IdempotencyMiddleware(app, store=sqlite_store, hooks=own_hooks)


# -- many hosts: Redis, PostgreSQL, outages, the application's own transaction -------------


counters: RateLimitStore = RedisStore(Redis(host="cache"), prefix="api:", timeout=0.05)
records: IdempotencyStore = PostgresStore("postgresql://app@db/app", schema="surefoot")
by_url: IdempotencyStore = RedisStore.from_url("redis+cluster://10.0.0.5:7000?clock=server")
health = StoreHealth(initial_backoff=0.5, max_backoff=30.0)
limited = RateLimitMiddleware(
    wrapped,
    store=counters,
    policies=[RateLimitPolicy("default", limits=["100/minute"], on_store_error="local_fallback")],
    fallback_workers=8,
    store_health=health,
)
guarded = IdempotencyMiddleware(
    app,
    store=records,
    policy=IdempotencyPolicy(on_store_error="fail_closed"),
    store_health=health,
)

keys = TransactionalKeys(ttl=86400)
with sqlite3.connect("ledger.db", isolation_level=None) as conn:
    conn.execute("BEGIN IMMEDIATE")
    claim = keys.claim(conn, principal="cus_42", key="order-1", method="POST", path="/charges")
    if claim.replay is None:
        claim.complete(201, {"content-type": "application/json"}, b"{}")
    conn.execute("COMMIT")


# -- who is calling: known credentials, an address ceiling ----------------------------------

identity = Identity(trusted_proxies=["10.0.0.0/8"], known_credentials=["sk_live_acme"])
checked = Identity(known_credentials=lambda credential: credential.startswith(b"sk_live_"))
ceilinged = RateLimitMiddleware(
    IdempotencyMiddleware(app, store=MemoryStore(), principal=identity),
    store=MemoryStore(),
    principal=identity,
    policies=[
        RateLimitPolicy("keys", limits=["100/minute"]),
        RateLimitPolicy("per-address", limits=["1000/minute"], per="address"),
    ],
)


# -- receiving webhooks: several senders, ordering, the event in a route ----------------------

receiving = WebhookReceiver(
    app,
    endpoints={
        "/webhooks/stripe": WebhookEndpoint(name="stripe", scheme=Stripe(secrets=("whsec_1",))),
        "/webhooks/github": WebhookEndpoint(name="github", scheme=GitHub(secrets=("s",))),
        "/webhooks/partner": WebhookEndpoint(
            name="partner",
            scheme=StandardWebhooks(secrets=("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",)),
            ordering=Ordering(object_field="data.id", version_field="data.version"),
            retention=30 * 86400,
            archive=True,
        ),
        "/webhooks/other": WebhookEndpoint(
            name="other",
            scheme=Hmac(secrets=("k",), header="X-Signature", prefix="sha256=", id_header="X-Id"),
        ),
    },
    store=sqlite_store,
    hooks=[LoggingHook(), PrometheusMetrics()],
)


def on_refused(event: Event) -> None:
    if isinstance(event, WebhookRefused):
        print(event.endpoint, event.code)


def handle(event: ReceivedWebhook) -> str:
    return f"{event.endpoint}:{event.id}:{webhook_store_key(event.endpoint, event.id)}"


# -- synchronous stores (WSGI workers, Django, Flask) ---------------------------------------

sync_records: SyncIdempotencyStore = sync_store_from_url("sqlite:///idempotency.db")
sync_counters: SyncRateLimitStore = SyncRedisStore.from_url("redis://cache:6379/0?prefix=api:")
sync_shared: SyncIdempotencyStore = SyncPostgresStore.from_url("postgresql://app@db/app")
sync_local: SyncRateLimitStore = SyncMemoryStore(max_counters=10_000)
sync_file: SyncIdempotencyStore = SyncSqliteStore("x.db", synchronous="FULL")
sync_records.close()
