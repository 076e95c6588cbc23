"""``AdminApp``: the gateway's admin API, a pure ASGI app on its own port.

Endpoints (JSON unless said otherwise; every one but the two probes needs
``Authorization: Bearer <token>``, compared in constant time)::

    GET  /healthz                       200 while the process serves (no token)
    GET  /readyz                        200 when the stores answer, else 503 (no token)
    GET  /metrics                       Prometheus exposition
    GET  /admin/config                  the configuration in force, secrets masked
    POST /admin/reload                  read the policy file again (422 if refused)
    GET  /admin/limits?client=NAME      current usage per policy and limit
         /admin/limits?principal=P
    GET  /admin/keys?principal=P&key=K  one idempotency record (route=ROUTE if scoped)
         /admin/keys?store_key=S
    GET  /admin/unknown                 keys whose outcome is unknown, with their age
    POST /admin/keys/resolve            {"store_key", "status", "body", "content_type"}
    POST /admin/keys/release            {"store_key"}: the request did not happen

Errors are problems from the catalogue: 401 ``admin_unauthorized``, 404
``admin_not_found``, 422 ``config_rejected``, 400 for a malformed admin request.
Reading usage decides nothing: each limit is asked with a cost of 0.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from surefoot._asgi import Receive, Scope, Send, request_id, send_problem
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
from surefoot.gateway._events import OutcomeResolved
from surefoot.gateway._gateway import Gateway
from surefoot.gateway._lookup import LOOKUP_PREFIX
from surefoot.idempotency._core import Record, State, StoredResponse, scoped_key
from surefoot.ratelimit._core import Item
from surefoot.ratelimit._policy import limit_key

__all__ = ["AdminApp"]

_JSON = b"application/json"


class AdminApp:
    """The admin API of one ``Gateway``.

    Args:
        gateway: the gateway to inspect and steer.
        on_reload: called after a successful ``POST /admin/reload`` (``surefoot serve`` with
            several workers passes a function telling the others to reload too).
    """

    def __init__(self, gateway: Gateway, *, on_reload: Callable[[], None] | None = None) -> None:
        self.gateway = gateway
        self.on_reload = on_reload

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
            self.authorize(scope)
            handler = _ROUTES.get((method, path))
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
        body, content_type = self.gateway.metrics.render()
        await _send(send, 200, body, content_type.encode())

    async def config(self, scope: Scope, receive: Receive, send: Send) -> None:
        effective = self.gateway.stack.config.effective()
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
        query = _query(scope)
        stack = self.gateway.stack
        config = stack.config
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
            for policy in config.rate_limit_policies:
                if principal in policy.allow or policy.per_route:
                    continue
                if policy.per == "address" and not principal.startswith("addr:"):
                    continue  # counted per address: not this principal's counter
                for limit in policy.limits_for(principal, tier):
                    if limit.algorithm == "concurrency":
                        continue  # in-flight slots are not a rate
                    key = limit_key(policy.name, limit, principal, "")
                    items.append(Item(key, limit.algorithm or "", limit, 0, True, ""))
                    labels.append((policy.name, limit.describe(), policy.shadow))
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

    async def keys(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope)
        if "store_key" in query:
            store_key = query["store_key"]
        elif "principal" in query and "key" in query:
            store_key = scoped_key(query["principal"], query["key"], query.get("route"))
        else:
            raise AdminBadRequest(reason="expected ?store_key=S or ?principal=P&key=K")
        record = await self.gateway.stack.idempotency_store.get(store_key, self.gateway.clock.now())
        if record is None:
            raise AdminNotFound(what=f"idempotency key {store_key!r}")
        await _json(send, 200, _record(store_key, record, self.gateway.clock.now()))

    async def unknown(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = self.gateway.clock.now()
        records = await self.gateway.stack.idempotency_store.records(
            now, state=State.UNKNOWN, limit=int(_query(scope).get("limit", "100"))
        )
        listed = [_record(k, r, now) for k, r in records if not k.startswith(LOOKUP_PREFIX)]
        await _json(send, 200, {"unknown": listed})

    async def resolve(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await _body(receive)
        store_key = _field(data, "store_key", str)
        status = _field(data, "status", int)
        body = data.get("body", "")
        content = (body if isinstance(body, str) else json.dumps(body)).encode()
        content_type = str(data.get("content_type", "application/json")).encode()
        response = StoredResponse(
            status,
            ((b"content-type", content_type), (b"content-length", str(len(content)).encode())),
            content,
        )
        await self.settle(scope, send, store_key, response)

    async def release(self, scope: Scope, receive: Receive, send: Send) -> None:
        store_key = _field(await _body(receive), "store_key", str)
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


_ROUTES: dict[tuple[str, str], Callable[..., Any]] = {
    ("GET", "/metrics"): AdminApp.metrics,
    ("GET", "/admin/config"): AdminApp.config,
    ("POST", "/admin/reload"): AdminApp.reload,
    ("GET", "/admin/limits"): AdminApp.limits,
    ("GET", "/admin/keys"): AdminApp.keys,
    ("GET", "/admin/unknown"): AdminApp.unknown,
    ("POST", "/admin/keys/resolve"): AdminApp.resolve,
    ("POST", "/admin/keys/release"): AdminApp.release,
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


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {name: values[0] for name, values in parsed.items()}


async def _body(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False) or sum(map(len, chunks)) > 1024 * 1024:
            break
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise AdminBadRequest(reason="expected a JSON object") from None
    if not isinstance(data, dict):
        raise AdminBadRequest(reason="expected a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AdminBadRequest(reason=f"expected {name!r} ({kind.__name__})")
    return value


async def _json(send: Send, status: int, data: Any) -> None:
    await _send(send, status, json.dumps(data, separators=(",", ":")).encode(), _JSON)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
