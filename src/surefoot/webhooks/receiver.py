"""``WebhookReceiver``: pure ASGI; verifies each delivery and hands each event to the app once.

Theory of operation, per POST on an endpoint's path (other requests pass through as they are):
1. Read the body, at most the endpoint's ``max_body`` bytes (else 413), and the headers its
   scheme reads (a repeated one is refused: which copy was signed cannot be told).
2. Verify the signature on the raw bytes (``_verify``), then read the event id and, with an
   ``Ordering``, the object and version (``_event``). Any failure answers the catalogue's
   problem, emits ``WebhookRefused`` and stores nothing.
3. Run the event through an ``IdempotencyMiddleware`` of the endpoint, keyed by the event
   id (``webhook_store_key``), with a retention of ``retention`` seconds: the first delivery
   executes; a duplicate while it runs gets 409 (the sender retries later), and after it
   succeeded, the stored answer. A 5xx, an exception or an unfinished answer releases the
   event, so the sender's retry runs it; a worker that died holds it until ``lease`` runs
   out, then the next delivery runs it.
4. With an ``Ordering``, the app is called only after the object's guard (``_order``) is
   claimed: an older version than the newest processed is acknowledged with 200 and never
   handed to the app (``WebhookStale``); while another event about the object is being
   processed, 409 ``webhook_object_busy`` (released, so the sender's retry comes back).
   The guard is settled before the answer's last chunk goes out, as the idempotency
   record is, so a sender that sends the next event the instant it has the answer finds
   the object free.
5. The app finds the verified event in ``scope["surefoot.webhook"]`` (a ``ReceivedWebhook``;
   ``webhook_event`` gives it to a FastAPI route) and its id in the
   ``Surefoot-Webhook-Id`` header, which the receiver sets after removing any sent copy
   (and of ``Surefoot-Webhook-Replay``, which only ``replay`` sets).
6. With ``archive=True``, each delivery the idempotency layer lets through to the handler
   is kept before the app sees it (best effort: a failed write is logged, the delivery
   goes on): the body, the headers the endpoint reads and ``content-type``, and what
   verification found, under ``archive_key`` until the retention ends (an ``EventArchive``).
   ``replay`` loads it, refuses while a delivery of the event runs (its lease not run
   out), forgets the event's completed idempotency record (an abandoned one is taken
   over as any delivery takes it over) and runs the stored delivery through the
   endpoint's idempotency layer and ordering guard again, not its verification (it was
   verified when kept; its timestamp may be past the tolerance now): a sender's delivery
   meanwhile is a duplicate, and a replayed old version is stale.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from surefoot._asgi import (
    NOT_EXECUTED,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    canonicalize,
    request_id,
    send_problem,
)
from surefoot._health import StoreHealth
from surefoot._paths import canonical_path
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    ConfigurationError,
    InvalidPath,
    RequestBodyTooLarge,
    StoreUnavailable,
    WebhookEventIdInvalid,
    WebhookObjectBusy,
    WebhookRejected,
    WebhookSignatureMalformed,
)
from surefoot.events import EventHook, LoggingHook, emit, wanting
from surefoot.idempotency import (
    IdempotencyMiddleware,
    IdempotencyPolicy,
    IdempotencyStore,
    State,
    classify,
    scoped_key,
)
from surefoot.webhooks import _events as ev
from surefoot.webhooks._event import Body, EventId, Ordering, read_event_id, read_ordering
from surefoot.webhooks._order import Verdict, ordering_key
from surefoot.webhooks._store import EventArchive, OrderingStore
from surefoot.webhooks._verify import Scheme

__all__ = [
    "EVENT_ID_HEADER",
    "REPLAY_HEADER",
    "WEBHOOK",
    "ReceivedWebhook",
    "ReplayOutcome",
    "WebhookEndpoint",
    "WebhookReceiver",
    "webhook_store_key",
]

_log = logging.getLogger("surefoot.webhooks")

#: The scope key under which the app finds the verified ``ReceivedWebhook``.
WEBHOOK = "surefoot.webhook"
#: The request header carrying the event id to the app (and to the idempotency layer).
EVENT_ID_HEADER = "Surefoot-Webhook-Id"
_EVENT_ID_NAME = EVENT_ID_HEADER.lower().encode("ascii")
#: The request header (``true``) that tells the app a delivery is an operator's replay.
REPLAY_HEADER = "Surefoot-Webhook-Replay"
_REPLAY_NAME = REPLAY_HEADER.lower().encode("ascii")
#: What every archive key starts with (store keys of other kinds never do).
ARCHIVE_PREFIX = "whevt:"
_STATE = "surefoot.webhook_state"
_REPLAYED = b"idempotent-replayed"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MiB = 1024 * 1024
_MAX_BODY = 16 * _MiB
#: Retention bounds: an idempotency record's TTL (1 minute to 90 days).
_MIN_RETENTION, _MAX_RETENTION = 60.0, 90 * 86400.0


@dataclass(frozen=True, kw_only=True)
class WebhookEndpoint:
    """One path that receives a sender's webhooks.

    Example:
        >>> WebhookEndpoint(name="stripe", scheme=Stripe(secrets=(os.environ["STRIPE_WHSEC"],)))

    Args:
        name: names the endpoint in store keys, events and metrics (lower case, digits,
            ``_.-``, at most 64); renaming it forgets which events were processed.
        scheme: the signature scheme and its secrets (``surefoot.webhooks.Stripe``...).
        event_id: where the event id is read, when not where the scheme keeps it (the
            ``webhook-id`` and ``X-GitHub-Delivery`` headers, Stripe's body ``id``).
        retention: seconds an event id is remembered (default 7 days): at least the
            sender's retry horizon plus its manual-replay window, or a late retry runs the
            event again. Shorter than the scheme's known horizon: a warning is logged.
        lease: seconds a delivery may take before it counts as abandoned (the worker
            died) and the next delivery of the same event runs it.
        ordering: the per-object ordering guard, if any.
        max_body: the largest body accepted (413 beyond).
        max_stored_response: the largest answer kept for duplicates (larger ones are
            sent but a duplicate then gets 409 ``idempotency_response_not_stored``).
        archive: keep each delivery handed to the app (its body, the headers the
            endpoint reads and ``content-type``) for ``retention`` seconds, so that
            ``WebhookReceiver.replay`` can run it again; the store must be an
            ``EventArchive``.

    Warning:
        An archived body is the sender's payload as it came, kept in the store for the
        retention: turn ``archive`` on only where the store may hold it. A
        ``MemoryStore`` drops its least recently used entries beyond its bound, and an
        entry dropped cannot be replayed.
    """

    name: str
    scheme: Scheme
    event_id: EventId | None = None
    retention: float = 7 * 86400.0
    lease: float = 60.0
    ordering: Ordering | None = None
    max_body: int = _MiB
    max_stored_response: int = 64 * 1024
    archive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            _fail(
                "name",
                "1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
                self.name,
            )
        if not hasattr(self.scheme, "verify") or not hasattr(self.scheme, "header_names"):
            _fail(
                "scheme", "a signature scheme (StandardWebhooks, Stripe, GitHub, Hmac)", self.scheme
            )
        if (
            self.event_id is None
            and self.scheme.event_id_field is None
            and not self.scheme.carries_id
        ):
            _fail(
                "event_id", "EventId(header=...) or EventId(field=...): the scheme has no id", None
            )
        if not _MIN_RETENTION <= self.retention <= _MAX_RETENTION:
            _fail("retention", "seconds from 60 to 7776000 (90 days)", self.retention)
        if not 0 < self.lease < self.retention:
            _fail("lease", "seconds above 0 and below the retention", self.lease)
        if type(self.max_body) is not int or not 0 < self.max_body <= _MAX_BODY:
            _fail("max_body", f"bytes from 1 to {_MAX_BODY}", self.max_body)
        if (
            type(self.max_stored_response) is not int
            or not 0 <= self.max_stored_response <= _MAX_BODY
        ):
            _fail("max_stored_response", f"bytes from 0 to {_MAX_BODY}", self.max_stored_response)
        horizon = self.scheme.horizon
        if horizon is not None and self.retention < horizon:
            _log.warning(
                "webhook endpoint %s keeps event ids %.0f s, less than the %.0f s over which "
                "its sender may still deliver them (retries and manual replays): a late "
                "delivery would run the event again",
                self.name,
                self.retention,
                horizon,
            )


def _fail(name: str, expected: str, got: object) -> None:
    raise ConfigurationError(f"WebhookEndpoint.{name}: expected {expected}, got {got!r}")


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """A verified event, as the application gets it (``scope["surefoot.webhook"]``)."""

    endpoint: str
    scheme: str
    id: str
    timestamp: float | None
    body: bytes
    object_id: str | None = None
    version: float | None = None

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def webhook_store_key(endpoint: str, event_id: str) -> str:
    """The idempotency store key of an endpoint's event (for ``store.get``, ``forget``...)."""
    return scoped_key(_principal(endpoint), event_id)


def _principal(endpoint: str) -> str:
    return f"webhook:{endpoint}"


def archive_key(endpoint: str, event_id: str) -> str:
    """The store key of an endpoint's archived event (``EventArchive.cache_get``)."""
    digest = hashlib.sha256(f"{endpoint}\n{event_id}".encode()).hexdigest()
    return ARCHIVE_PREFIX + digest


ReplayResult = Literal[
    "replayed", "failed", "stale", "busy", "duplicate", "not_archived", "in_flight"
]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What ``WebhookReceiver.replay`` did.

    ``result``:

    - ``replayed``: the app ran the event again and answered ``status``, ``headers``,
      ``body``; ``failed``: it ran and answered a 5xx or raised (``status`` None), and
      the event was released as a failed delivery is;
    - ``stale``, ``busy``: the ordering guard answered (a newer version of the object was
      processed; another event about it is running), the app was not called;
    - ``duplicate``: a sender's delivery of the event got in first, its answer is here;
    - ``not_archived``: nothing is kept for the event (never archived, or past its
      retention, or dropped by a bounded store);
    - ``in_flight``: a delivery of the event is running; ``retry_after`` is when its
      lease runs out. Nothing was done.
    """

    result: ReplayResult
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    retry_after: float | None = None


class _State:
    """What one delivery did, shared by the receiver and the handler behind its
    idempotency layer (through the scope)."""

    __slots__ = ("busy", "executed", "replay", "replayed", "stale", "status")

    def __init__(self, replay: bool = False) -> None:
        self.replay = replay  # an operator's replay: not archived again
        self.executed = False
        self.status: int | None = None
        self.replayed = False
        self.busy = False
        self.stale: tuple[str, float, float | None] | None = None


class WebhookReceiver:
    """Verifies webhooks on their endpoints' paths and hands each event to ``app`` once.

    Example:
        >>> stripe = WebhookEndpoint(name="stripe", scheme=Stripe(secrets=(whsec,)))
        >>> app = WebhookReceiver(
        ...     app, endpoints={"/webhooks/stripe": stripe}, store=SqliteStore("surefoot.db")
        ... )

    Args:
        app: the ASGI app; it gets verified events and every other request.
        endpoints: path (exact, in canonical form) to endpoint.
        store: where event ids are kept (any ``surefoot.storage`` store); with an
            endpoint that has an ``Ordering``, it must also keep ordering records
            (every store of ``surefoot.storage`` does).
        clock: the time source (signature tolerance, leases, retention).
        hooks: event hooks (default: one ``LoggingHook``); they get the idempotency
            layer's events too.
        problem_base: the base URI of problem types.
        store_health: shared with other middlewares on the same store, if any.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        endpoints: Mapping[str, WebhookEndpoint],
        store: IdempotencyStore,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        store_health: StoreHealth | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigurationError("WebhookReceiver.endpoints: expected at least one endpoint")
        names = [e.name for e in endpoints.values()]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"WebhookReceiver.endpoints: expected distinct names, got {names}"
            )
        ordered = any(e.ordering is not None for e in endpoints.values())
        if ordered and not isinstance(store, OrderingStore):
            raise ConfigurationError(
                "WebhookReceiver.store: an endpoint has an ordering guard, so the store must keep "
                f"ordering records (an OrderingStore), and {type(store).__name__} does not"
            )
        archived = [e.name for e in endpoints.values() if e.archive]
        if archived and not isinstance(store, EventArchive):
            raise ConfigurationError(
                f"WebhookEndpoint.archive: endpoint {archived[0]!r} archives its events, so the "
                "store must keep them (an EventArchive, with cache_get and cache_put), and "
                f"{type(store).__name__} does not"
            )
        self.app = app
        self.store = store
        self.clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self.wants = wanting(self.hooks)
        self.problem_base = problem_base
        health = store_health if store_health is not None else StoreHealth()
        self.endpoints: dict[str, tuple[WebhookEndpoint, IdempotencyMiddleware]] = {}
        #: Endpoint name -> its path, for ``replay``.
        self.paths: dict[str, str] = {}
        for path, endpoint in endpoints.items():
            try:
                canonical = canonical_path(path.encode("utf-8")).path
            except InvalidPath:
                canonical = ""
            if not path.startswith("/") or canonical != path:
                raise ConfigurationError(
                    f"WebhookReceiver.endpoints: expected paths in canonical form such as "
                    f"'/webhooks/stripe', got {path!r}"
                )
            handler = _Handler(app, endpoint, store if ordered else None, self)  # type: ignore[arg-type]
            policy = IdempotencyPolicy(
                methods=frozenset({"POST"}),
                ttl=endpoint.retention,
                lease=endpoint.lease,
                on_lease_expiry="reexecute",
                on_server_error="release",
                header=EVENT_ID_HEADER,
            )
            inner = IdempotencyMiddleware(
                handler,
                store=store,
                policy=policy,
                principal=_Principal(_principal(endpoint.name)),
                clock=self.clock,
                hooks=self.hooks,
                max_request_body=endpoint.max_body,
                max_stored_response=endpoint.max_stored_response,
                problem_base=problem_base,
                store_health=health,
            )
            self.endpoints[path] = (endpoint, inner)
            self.paths[endpoint.name] = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refused = canonicalize(scope, allow_method_override=False)
        if refused is not None:
            await send_problem(send, refused, request_id=request_id(scope), base=self.problem_base)
            return
        found = self.endpoints.get(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        await self.deliver(found[0], found[1], scope, receive, send)

    def emit(self, cls: type[ev.WebhookReceiverEvent], scope: Scope, **fields: Any) -> None:
        if self.wants(cls):
            emit(self.hooks, cls(at=self.clock.now(), request_id=request_id(scope), **fields))

    async def deliver(
        self,
        endpoint: WebhookEndpoint,
        inner: IdempotencyMiddleware,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            body = await _read_body(scope, receive, endpoint.max_body)
            if body is None:
                return  # the sender went away before its body arrived: nothing to do
            received = _verified(endpoint, scope, body, self.clock.now())
        except (WebhookRejected, RequestBodyTooLarge) as exc:
            self.emit(ev.WebhookRefused, scope, endpoint=endpoint.name, code=exc.code)
            await send_problem(send, exc, request_id=request_id(scope), base=self.problem_base)
            return
        scope[WEBHOOK] = received
        scope["headers"] = [
            *(h for h in scope["headers"] if h[0] != _EVENT_ID_NAME and h[0] != _REPLAY_NAME),
            (_EVENT_ID_NAME, received.id.encode("ascii")),
        ]
        state = scope[_STATE] = _State()
        sent_body = False

        async def replay_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
                state.replayed = any(k == _REPLAYED for k, _ in message.get("headers", ()))
            await send(message)

        try:
            await inner(scope, replay_receive, observe)
        except BaseException:
            self.emit(
                ev.WebhookFailed, scope, endpoint=endpoint.name, event_id=received.id, status=None
            )
            raise
        self.report(endpoint.name, received.id, state, scope)

    async def archive(self, endpoint: WebhookEndpoint, scope: Scope) -> None:
        """Keep the delivery in ``scope`` for ``replay`` (step 6), best effort."""
        received: ReceivedWebhook = scope[WEBHOOK]
        wanted = {name.lower().encode("latin-1") for name in endpoint.scheme.header_names}
        wanted.add(b"content-type")
        if endpoint.event_id is not None and endpoint.event_id.header is not None:
            wanted.add(endpoint.event_id.header.lower().encode("latin-1"))
        document = {
            "scheme": received.scheme,
            "timestamp": received.timestamp,
            "object_id": received.object_id,
            "version": received.version,
            "headers": [
                [k.decode("latin-1"), v.decode("latin-1")]
                for k, v in scope["headers"]
                if k.lower() in wanted
            ],
            "body": base64.b64encode(received.body).decode("ascii"),
        }
        value = json.dumps(document, separators=(",", ":")).encode("ascii")
        now = self.clock.now()
        store: EventArchive = self.store  # type: ignore[assignment]
        try:
            await store.cache_put(
                archive_key(endpoint.name, received.id), value, now + endpoint.retention, now
            )
        except Exception as exc:  # the delivery goes on; only its replay is lost
            _log.warning(
                "webhook event %s of %s not archived (%s): it cannot be replayed",
                received.id,
                endpoint.name,
                type(exc).__name__,
            )

    async def replay(
        self, name: str, event_id: str, *, request_id: str | None = None
    ) -> ReplayOutcome:
        """Run the archived event ``event_id`` of endpoint ``name`` through the app again.

        The app gets the archived body and headers with ``Surefoot-Webhook-Replay: true``
        beside ``Surefoot-Webhook-Id``, behind the endpoint's idempotency layer and
        ordering guard, without a new signature check (step 6). ``request_id`` (default:
        a new one) is the replay's in its events and for the app (``X-Request-Id`` where
        the app's layers read it), such as the id of the operator's request.

        Raises:
            LookupError: no endpoint of this receiver is called ``name``.

        Warning:
            A replay runs the app as a new delivery would: an event whose effect was
            booked is booked again. Replay events whose first processing was wrong or
            lost.
        """
        path = self.paths.get(name)
        if path is None:
            raise LookupError(f"no webhook endpoint named {name!r}")
        endpoint, inner = self.endpoints[path]
        now = self.clock.now()
        kept = None
        if endpoint.archive:
            store: EventArchive = self.store  # type: ignore[assignment]
            kept = await store.cache_get(archive_key(name, event_id), now)
        if kept is None:
            return ReplayOutcome("not_archived")
        store_key = webhook_store_key(name, event_id)
        record = await self.store.get(store_key, now)
        found = classify(record, now)
        if record is not None and found is State.IN_FLIGHT:
            return ReplayOutcome("in_flight", retry_after=record.lease_expires_at - now)
        if found is State.COMPLETED:
            # Only a completed record is forgotten: nothing but an operator or its TTL
            # changes it. An abandoned one (its lease ran out) is taken over by the
            # replay's own reservation, so a sender's delivery that took it over first
            # is never forgotten under it (the replay is then its duplicate).
            await self.store.forget(store_key, now)
        document = json.loads(kept)
        body = base64.b64decode(document["body"])
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("ascii"),
            "root_path": "",
            "query_string": b"",
            "headers": [
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in document["headers"]),
                (_EVENT_ID_NAME, event_id.encode("ascii")),
                (_REPLAY_NAME, b"true"),
            ],
            "client": None,
            "server": None,
            "state": {} if request_id is None else {"request_id": request_id},
            WEBHOOK: ReceivedWebhook(
                endpoint=name,
                scheme=document["scheme"],
                id=event_id,
                timestamp=document["timestamp"],
                body=body,
                object_id=document["object_id"],
                version=document["version"],
            ),
        }
        state = scope[_STATE] = _State(replay=True)
        answered = asyncio.Event()
        sent_body = False
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await answered.wait()  # as a server: the client is there until answered
            return {"type": "http.disconnect"}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
                headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                )
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    answered.set()

        try:
            await inner(scope, receive, capture)
        except Exception:
            _log.warning("replay of webhook event %s of %s: the app raised", event_id, name,
                         exc_info=True)  # fmt: skip
            state.status = None
        status = state.status
        result: ReplayResult
        if state.stale is not None:
            result = "stale"
        elif state.busy:
            result = "busy"
        elif state.executed:
            result = "replayed" if status is not None and 200 <= status < 300 else "failed"
        else:
            result = "duplicate"
        self.emit(
            ev.WebhookReplayed, scope, endpoint=name, event_id=event_id, status=status,
            result=result,
        )  # fmt: skip
        return ReplayOutcome(result, status, tuple(headers), b"".join(chunks))

    def report(self, name: str, event_id: str, state: _State, scope: Scope) -> None:
        status = state.status
        if not state.executed:
            # Answered by the idempotency layer: the stored answer, or 409 while the first runs.
            if status is not None and (state.replayed or status == 409):
                self.emit(
                    ev.WebhookDuplicate,
                    scope,
                    endpoint=name,
                    event_id=event_id,
                    in_progress=not state.replayed,
                    status=status,
                )
        elif state.stale is not None:
            object_id, version, newest = state.stale
            self.emit(
                ev.WebhookStale, scope, endpoint=name, event_id=event_id,
                object_id=object_id, version=version, newest=newest,
            )  # fmt: skip
        elif state.busy:
            received: ReceivedWebhook = scope[WEBHOOK]
            self.emit(
                ev.WebhookBusy,
                scope,
                endpoint=name,
                event_id=event_id,
                object_id=received.object_id,
            )
        elif status is not None and 200 <= status < 300:
            self.emit(ev.WebhookProcessed, scope, endpoint=name, event_id=event_id, status=status)
        else:
            self.emit(ev.WebhookFailed, scope, endpoint=name, event_id=event_id, status=status)


class _Principal:
    """The idempotency principal of an endpoint: every delivery to it is one client's."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, scope: Scope) -> str:
        return self.name


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestBodyTooLarge(limit=limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestBodyTooLarge(limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _verified(endpoint: WebhookEndpoint, scope: Scope, body: bytes, now: float) -> ReceivedWebhook:
    """Steps 1 and 2: the headers the endpoint reads, the signature, the id, the ordering."""
    scheme = endpoint.scheme
    wanted = set(scheme.header_names)
    id_header = endpoint.event_id.header if endpoint.event_id is not None else None
    if id_header is not None:
        wanted.add(id_header)
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if name not in wanted:
            continue
        if name in headers:
            if name == id_header:
                raise WebhookEventIdInvalid(source=f"header {name}", reason="sent more than once")
            raise WebhookSignatureMalformed(header=name, reason="it was sent more than once")
        headers[name] = raw_value.decode("latin-1")
    verified = scheme.verify(headers, body, now)
    parsed = Body(body)
    event_id = read_event_id(
        headers, parsed, endpoint.event_id, verified.event_id, scheme.event_id_field
    )
    object_id = version = None
    if endpoint.ordering is not None:
        object_id, version = read_ordering(endpoint.ordering, parsed)
    return ReceivedWebhook(
        endpoint=endpoint.name,
        scheme=verified.scheme,
        id=event_id,
        timestamp=verified.timestamp,
        body=body,
        object_id=object_id,
        version=version,
    )


class _Handler:
    """The app behind an endpoint's idempotency layer: runs only for a reserved event,
    behind the object's ordering guard when the endpoint has one (step 4)."""

    def __init__(
        self,
        app: ASGIApp,
        endpoint: WebhookEndpoint,
        store: OrderingStore | None,
        receiver: WebhookReceiver,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.ordering = endpoint.ordering
        self.store = store
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: _State = scope[_STATE]
        state.executed = True
        if self.endpoint.archive and not state.replay:
            await self.receiver.archive(self.endpoint, scope)
        if self.ordering is None or self.store is None:
            await self.app(scope, receive, send)
            return
        received: ReceivedWebhook = scope[WEBHOOK]
        assert received.object_id is not None
        assert received.version is not None
        key = ordering_key(self.endpoint.name, received.object_id)
        token = secrets.token_hex(16)
        clock = self.receiver.clock
        now = clock.now()
        try:
            claim = await self.store.order_claim(
                key,
                version=received.version,
                token=token,
                now=now,
                lease=self.ordering.lease,
                retention=self.endpoint.retention,
            )
        except Exception:
            _log.warning("ordering guard of %s unavailable", self.endpoint.name, exc_info=True)
            scope[NOT_EXECUTED] = True
            await self.problem(scope, send, StoreUnavailable(retry_after=1))
            return
        if claim.verdict is Verdict.STALE:
            state.stale = (received.object_id, received.version, claim.newest)
            await _send_json(
                send, {"status": "stale", "event_id": received.id, "newest": claim.newest}
            )
            return
        if claim.verdict is Verdict.BUSY:
            state.busy = True
            scope[NOT_EXECUTED] = True
            wait = max(1, math.ceil(claim.until - now))
            await self.problem(scope, send, WebhookObjectBusy(retry_after=wait))
            return
        await self.run(scope, receive, send, key, token, received.version)

    async def run(
        self, scope: Scope, receive: Receive, send: Send, key: str, token: str, version: float
    ) -> None:
        settled = False
        status = 500

        async def settle(ok: bool) -> None:
            nonlocal settled
            settled = True
            try:
                assert self.store is not None
                await self.store.order_settle(
                    key,
                    token=token,
                    version=version,
                    ok=ok,
                    now=self.receiver.clock.now(),
                    retention=self.endpoint.retention,
                )
            except Exception:  # the lease runs out instead: the object is free again then
                _log.warning("ordering guard of %s not settled", self.endpoint.name, exc_info=True)

        async def settle_then_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not (settled or message.get("more_body", False)):
                await settle(200 <= status < 300)  # the last chunk: settle before it goes out
            await send(message)

        try:
            await self.app(scope, receive, settle_then_send)
        finally:
            if not settled:
                await settle(False)

    async def problem(self, scope: Scope, send: Send, error: Any) -> None:
        await send_problem(
            send, error, request_id=request_id(scope), base=self.receiver.problem_base
        )


async def _send_json(send: Send, document: dict[str, Any]) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
