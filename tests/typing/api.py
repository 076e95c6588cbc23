"""Type-checked (by mypy, via scripts/check), never run: the public API as users write it."""

from __future__ import annotations

from starlette.applications import Starlette

from surefoot.clock import Clock, SystemClock
from surefoot.events import Event, LoggingHook
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy, KeyReserved
from surefoot.storage import IdempotencyStore, MemoryStore, SqliteStore, store_from_url
from surefoot.testing import ManualClock

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
