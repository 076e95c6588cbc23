"""Settling ``outcome unknown`` keys by asking the upstream: lookups and the reconciler.

A key becomes outcome unknown when the upstream may have done the work but the gateway
could not tell (a 5xx, a timeout, a broken connection after the request was sent).
A route's *lookup* is a read-only request to the upstream that finds the work by
something the client sent (``GET /charges/by-reference/{body.reference}``).

Rule 1: a lookup answering one of ``found`` means the work happened: its answer becomes
        the key's stored result (with ``status`` if configured), replayed to every retry.
Rule 2: a lookup answering one of ``not_found`` means it did not, but only once the key
        has been unknown for ``not_found_after`` seconds: an upstream that timed out may
        still be working, and releasing its key early would run the request twice. Then
        the key is released and the retry executes.
Rule 3: any other answer, an error or a timeout leaves the key unknown (the client is
        told to retry later); nothing is ever guessed.
Rule 4: the reconciler needs the request that failed, so when a key becomes unknown on a
        route with a lookup, the rendered lookup is saved beside it in the same store
        (a completed record under ``lookup:`` + the key, with the key's TTL). Settling a
        key forgets its companion.
Rule 5: settling is one store step, only from UNKNOWN: ``resolve``, or a release by
        ``finish`` with the record's own fencing token. Two settlers racing (two retries,
        a retry and the reconciler, two workers) settle once: a second ``resolve`` of a
        completed key is refused, and a second release is refused once a retry has
        reserved the key again (a ``forget`` there would let that retry's twin run too).
Rule 6: a key whose worker died (its lease ran out) has no saved lookup; its age counts
        from the end of its lease, so a not-found answer can release it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

import httpx

from surefoot._asgi import Scope, header_values, request_id, route_method
from surefoot._json import NOT_JSON, parse_json_body
from surefoot._routes import RouteTable
from surefoot.clock import Clock
from surefoot.events import EventHook, emit, wanted
from surefoot.gateway._events import OutcomeResolved
from surefoot.gateway._schema import PLACEHOLDER, Lookup
from surefoot.idempotency import (
    Begin,
    IdempotencyStore,
    Outcome,
    Reserved,
    Resolution,
    State,
    Step,
    StoredResponse,
)

__all__ = ["LOOKUP_PREFIX", "LookupResolver"]

_log = logging.getLogger("surefoot.gateway.reconciler")

LOOKUP_PREFIX = "lookup:"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A rendered lookup, as saved beside an unknown key."""

    method: str
    target: str  # path and query on the upstream
    headers: tuple[tuple[str, str], ...]
    found: tuple[int, ...]
    not_found: tuple[int, ...]
    status: int | None
    timeout: float
    not_found_after: float
    since: float  # when the key became unknown

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "method": self.method,
                "target": self.target,
                "headers": self.headers,
                "found": self.found,
                "not_found": self.not_found,
                "status": self.status,
                "timeout": self.timeout,
                "not_found_after": self.not_found_after,
                "since": self.since,
            }
        ).encode()

    @classmethod
    def loads(cls, raw: bytes) -> _Pending:
        data = json.loads(raw)
        return cls(
            method=data["method"],
            target=data["target"],
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            found=tuple(data["found"]),
            not_found=tuple(data["not_found"]),
            status=data["status"],
            timeout=float(data["timeout"]),
            not_found_after=float(data["not_found_after"]),
            since=float(data["since"]),
        )


class LookupResolver:
    """The gateway's ``OutcomeResolver``: lookups on retries, and the reconciler.

    Args:
        store: the idempotency store.
        client: the upstream's HTTP client (the proxy's pool); ``base_url`` its URL.
        lookups: route template -> ``Lookup``.
        key_header: the idempotency key's header; ``body_field`` the body field with the key.
        ttl: seconds a saved lookup is kept (the routes' longest TTL).
        not_found_after: seconds a key must have been unknown before a not-found answer
            releases it (the upstream's total timeout, at least).
        clock, hooks: time and events; ``on_pending``: told how many keys are unknown.
    """

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        client: httpx.AsyncClient,
        base_url: str,
        lookups: Mapping[str, Lookup],
        key_header: str,
        body_field: str | None,
        ttl: float,
        not_found_after: float,
        clock: Clock,
        hooks: Iterable[EventHook] = (),
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.base = httpx.URL(base_url)
        self.routes = RouteTable(lookups.items())
        self.key_header = key_header.lower().encode("latin-1")
        self.body_field = body_field
        self.ttl = ttl
        self.not_found_after = not_found_after
        self.clock = clock
        self.hooks = tuple(hooks)
        self.on_pending = on_pending

    # -- OutcomeResolver -----------------------------------------------------------------------

    async def remember(self, scope: Scope, store_key: str, body: bytes) -> None:
        pending = self.render(scope, body, since=self.clock.now())
        if pending is None:
            return
        now = self.clock.now()
        companion = LOOKUP_PREFIX + store_key
        begin = Begin(
            fingerprint="lookup",
            token=secrets.token_hex(8),
            lease=60.0,
            ttl=self.ttl,
            on_lease_expiry="reexecute",
        )
        decision = await self.store.begin(companion, begin, now)
        if isinstance(decision, Reserved):
            saved = StoredResponse(200, (), pending.dumps())
            await self.store.finish(companion, begin.token, Outcome(Step.COMPLETE, saved), now)

    async def resolve(self, scope: Scope, store_key: str, body: bytes) -> Resolution:
        saved = await self.saved(store_key)
        pending = saved if saved is not None else self.render(scope, body, since=None)
        if pending is None:
            return None
        return await self.settle(store_key, pending, how="lookup", rid=request_id(scope))

    # -- the reconciler ------------------------------------------------------------------------

    async def reconcile_once(self, *, limit: int = 100) -> int:
        """One pass over the unknown keys; the number settled."""
        now = self.clock.now()
        unknown = [
            key
            for key, _ in await self.store.records(now, state=State.UNKNOWN, limit=limit)
            if not key.startswith(LOOKUP_PREFIX)
        ]
        settled = 0
        for key in unknown:
            pending = await self.saved(key)
            if pending is None:
                continue
            if await self.settle(key, pending, how="reconciler", rid="") is not None:
                settled += 1
        if self.on_pending is not None:
            self.on_pending(len(unknown) - settled)
        return settled

    async def run(self, interval: float) -> None:
        """Reconcile every ``interval`` seconds (jittered) until cancelled."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            try:
                await self.reconcile_once()
            except Exception:  # the store or the upstream is down: try next time
                _log.warning("reconciler pass failed; retrying later", exc_info=True)

    # -- settling ------------------------------------------------------------------------------

    async def saved(self, store_key: str) -> _Pending | None:
        record = await self.store.get(LOOKUP_PREFIX + store_key, self.clock.now())
        if record is None or record.response is None or record.response.body is None:
            return None
        try:
            return _Pending.loads(record.response.body)
        except (ValueError, KeyError, TypeError):
            return None

    async def settle(self, store_key: str, pending: _Pending, *, how: str, rid: str) -> Resolution:
        record = await self.store.get(store_key, self.clock.now())
        if record is None or record.state is not State.UNKNOWN:
            return None  # settled meanwhile (another settler): the next retry sees how
        try:
            response = await self.client.request(
                pending.method,
                self.base.join(pending.target),
                headers=[*pending.headers, ("x-request-id", rid or secrets.token_hex(16))],
                timeout=pending.timeout,
            )
        except httpx.HTTPError:
            return None
        now = self.clock.now()
        # A key nobody saved a lookup for became unknown when its lease ran out.
        since = pending.since if pending.since >= 0 else record.lease_expires_at
        age = max(0.0, now - since)
        outcome: Resolution
        if response.status_code in pending.found:
            result = StoredResponse(
                pending.status or response.status_code,
                _stored_headers(response),
                response.content,
            )
            if not await self.store.resolve(store_key, result, now):
                return None
            outcome, name = result, "found"
        elif response.status_code in pending.not_found and age >= pending.not_found_after:
            # Released with the record's own fencing token (Rule 5): if another settler
            # released it first and a retry holds it now, this release is refused.
            release = Outcome(Step.RELEASE)
            if not await self.store.finish(store_key, record.token, release, now):
                return None
            outcome, name = "release", "not_found"
        else:
            return None
        await self.store.forget(LOOKUP_PREFIX + store_key, now)
        if wanted(self.hooks, OutcomeResolved):
            emit(
                self.hooks,
                OutcomeResolved(
                    at=now, request_id=rid, store_key=store_key, how=how, result=name, age=age
                ),
            )
        return outcome

    def render(self, scope: Scope, body: bytes, *, since: float | None) -> _Pending | None:
        """The route's lookup for this request, or None (no lookup, or a value missing)."""
        matched = self.routes.match_params(route_method(scope), scope["path"])
        if matched is None:
            return None
        _, lookup, params = matched
        content_type = next(iter(header_values(scope, b"content-type")), None)
        parsed = parse_json_body(body, content_type)
        values: dict[str, str] = {}
        for name in PLACEHOLDER.findall(lookup.path):
            value = self._value(name, scope, parsed, params)
            if value is None:
                return None
            values[name] = quote(str(value), safe="")
        target = PLACEHOLDER.sub(lambda m: values[m.group(1)], lookup.path)
        return _Pending(
            method=lookup.method,
            target=target,
            headers=tuple(lookup.headers.items()),
            found=tuple(lookup.found),
            not_found=tuple(lookup.not_found),
            status=lookup.status,
            timeout=lookup.timeout,
            not_found_after=(
                self.not_found_after if lookup.not_found_after is None else lookup.not_found_after
            ),
            since=-1.0 if since is None else since,
        )

    def _value(
        self, name: str, scope: Scope, parsed: Any, params: Mapping[str, str]
    ) -> object | None:
        kind, _, rest = name.partition(".")
        if kind == "key":
            keys = header_values(scope, self.key_header)
            if keys:
                return keys[0].decode("latin-1")
            if self.body_field is not None and isinstance(parsed, dict):
                return parsed.get(self.body_field)
            return None
        if kind == "body":
            node: Any = parsed
            if node is NOT_JSON:
                return None
            for part in rest.split("."):
                if not isinstance(node, dict) or part not in node:
                    return None
                node = node[part]
            return node if isinstance(node, str | int | float) and node is not True else None
        if kind == "path":
            return params.get(rest)
        if kind == "query":
            found = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(rest)
            return found[0] if found else None
        if kind == "header":
            values = header_values(scope, rest.lower().encode("latin-1"))
            return values[0].decode("latin-1") if values else None
        return None


def _stored_headers(response: httpx.Response) -> tuple[tuple[bytes, bytes], ...]:
    kept = []
    content_type = response.headers.get("content-type")
    if content_type is not None:
        kept.append((b"content-type", content_type.encode("latin-1")))
    kept.append((b"content-length", str(len(response.content)).encode()))
    return tuple(kept)
