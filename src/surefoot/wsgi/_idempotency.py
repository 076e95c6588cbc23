"""``IdempotencyGuard``: idempotency keys for blocking code (WSGI, Django, Flask).

The ASGI middleware's rules, driven synchronously: every decision (the policy of a
route, the key, the fingerprint, the store's answer, the outcome of a response, the
events) is made by ``surefoot.idempotency.middleware.Exchange``, shared with the ASGI
``_Responder``; only the calls to the store, the view and the clock's waits are here.

Rule 1: a protected request reads its body within ``max_request_body`` (413 over it) and
        is answered without calling the view unless the store reserved its key.
Rule 2: a view's ``bytes`` body settles the reservation before ``handle`` returns. A
        streamed body is passed through chunk by chunk while a copy of at most
        ``max_stored_response`` bytes is kept; it settles as its last chunk is handed out
        (known from ``Content-Length``, else when the iterable is exhausted), or when it
        is closed early or raises (then by ``on_server_error``, as an unfinished ASGI
        response). A view that raises settles the same way before the exception goes on.
Rule 3: a ``BaseException`` (a worker told to exit) that interrupts a view before its
        response is complete leaves the reservation to its lease, as the ASGI middleware
        does for a cancelled request: the work may be half done.
Rule 4: a settle that fails never changes what the client gets: the reservation is left to
        its lease (``on_lease_expiry`` decides what a retry meets).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    BadRequest,
    IdempotencyKeyAmbiguous,
    IdempotencyKeyInvalid,
    RequestBodyTooLarge,
    StoreCapacityExceeded,
    SurefootError,
)
from surefoot.events import EventHook
from surefoot.idempotency import (
    Begin,
    Decision,
    IdempotencyPolicy,
    InProgress,
    ReservationAbandoned,
    StoredResponse,
    SyncIdempotencyStore,
)
from surefoot.idempotency.middleware import Exchange, IdempotencySettings, MiB
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.wsgi._request import (
    Request,
    Response,
    _byte_headers,
    _text_headers,
    problem_response,
)

__all__ = ["IdempotencyGuard"]

View = Callable[[], Response]
_REPLAYED = ("idempotent-replayed", "true")
_UNPROTECTED = ("idempotency-status", "unprotected")


class IdempotencyGuard(IdempotencySettings):
    """Makes retried writes execute once and replay the same response, in blocking code.

    Example:
        >>> guard = IdempotencyGuard(
        ...     store=sync_store_from_url("sqlite:///idempotency.db"),
        ...     routes={"POST /v1/charges": IdempotencyPolicy(), "/health": None},
        ... )
        >>> response = guard.handle(Request.from_environ(environ), lambda: view(environ))

    The arguments are ``surefoot.idempotency.IdempotencyMiddleware``'s, on a
    ``SyncIdempotencyStore``, with a blocking ``sleep`` and without ``resolver`` (a
    gateway's). One guard serves every thread of a process.
    """

    _kind = (
        "SyncIdempotencyStore (blocking begin, finish, resolve, forget, get, records, purge, close)"
    )
    _name = "IdempotencyGuard"

    def __init__(
        self,
        *,
        store: SyncIdempotencyStore,
        policy: IdempotencyPolicy | None = None,
        routes: Mapping[str, IdempotencyPolicy | None] | None = None,
        principal: PrincipalResolver = default_principal,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        hooks: Sequence[EventHook] | None = None,
        max_request_body: int = MiB,
        max_stored_response: int = MiB,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        store_health: StoreHealth | None = None,
        outcome_unknown_retry_after: float = 5.0,
        allow_method_override: bool = False,
    ) -> None:
        super().__init__(
            store=store,
            policy=policy,
            routes=routes,
            principal=principal,
            clock=clock,
            hooks=hooks,
            max_request_body=max_request_body,
            max_stored_response=max_stored_response,
            problem_base=problem_base,
            store_health=store_health,
            outcome_unknown_retry_after=outcome_unknown_retry_after,
            allow_method_override=allow_method_override,
        )
        self.sleep = sleep

    def _accepts(self, store: object) -> bool:
        return isinstance(store, SyncIdempotencyStore) and not inspect.iscoroutinefunction(
            store.begin
        )

    def handle(self, request: Request, call: View) -> Response:
        """Answer ``request``: replay or refuse it without calling ``call``, or call it
        once and return its response (a streamed body wrapped, see the module docstring).

        An exception from ``call`` (or from its streamed body) settles the reservation
        by ``on_server_error`` and goes on.
        """
        refused = request.canonicalize(allow_method_override=self.allow_method_override)
        if refused is not None:
            return problem_response(refused, request, problem_base=self.problem_base)
        selected = self.select(request.scope)
        if selected is None:
            return call()
        assert not isinstance(selected, SurefootError)  # only for a scope not canonicalized
        policy, route, method = selected
        return _SyncExchange(self, policy, route, method, request, call).run()


class _SyncExchange(Exchange):
    """One protected request: the ``Exchange`` driven by blocking calls."""

    __slots__ = ("call", "guard", "request")

    def __init__(
        self,
        guard: IdempotencyGuard,
        policy: IdempotencyPolicy,
        route: str | None,
        method: str,
        request: Request,
        call: View,
    ) -> None:
        super().__init__(guard, policy, route, method, request.scope)
        self.guard = guard
        self.request = request
        self.call = call

    def problem(self, error: SurefootError) -> Response:
        return problem_response(error, self.request, problem_base=self.guard.problem_base)

    def run(self) -> Response:
        refused = self.identify()
        if refused is not None:
            return self.problem(refused)
        try:
            keys, content_type = self.scan()
            self.body = self.request.read_body(self.guard.max_request_body)
            key = self.read_key(keys, content_type)
        except (RequestBodyTooLarge, IdempotencyKeyInvalid, IdempotencyKeyAmbiguous) as exc:
            return self.problem(self.refused(exc))
        except BadRequest as exc:  # the body could not be read: the client is gone
            return self.problem(exc)
        if key is None:
            missing = self.missing_key()
            return self.call() if missing is None else self.problem(missing)
        self.keyed(key)
        return self.decide()

    def decide(self) -> Response:
        request = self.begin_request()
        clock = self.guard.clock
        started = clock.now()
        decision = self.begin(request, started, first=True)
        if isinstance(decision, Response):
            return decision
        waited = 0.0
        if isinstance(decision, InProgress) and self.policy.wait > 0:
            deadline = started + self.policy.wait
            pause = 0.05
            while isinstance(decision, InProgress):
                now = clock.now()
                if now >= deadline:
                    break
                self.guard.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 1.0)
                decision = self.begin(request, clock.now(), first=False)
                if isinstance(decision, Response):
                    return decision
            waited = clock.now() - started
        answer = self.answer(decision, waited=waited)
        if isinstance(answer, str):
            return self.execute()
        if isinstance(answer, SurefootError):
            return self.problem(answer)
        return self.replay(answer)

    def begin(self, request: Begin, now: float, *, first: bool) -> Decision | Response:
        """The store's decision, or the response when there is none."""
        assert self.store_key is not None
        health = self.guard.health
        permit = health.permit(now)
        if not permit.call:
            return self.unavailable(None, first=first)
        try:
            decision: Decision = self.guard.store.begin(self.store_key, request, now)
        except StoreCapacityExceeded as exc:
            return self.problem(self.begin_full(permit, exc))
        except Exception as exc:  # StoreUnavailable, or a driver error the store let through
            self.begin_failed(permit, exc)
            return self.unavailable(exc, first=first)
        except BaseException:
            health.abandoned(permit, self.guard.clock.now())
            raise
        self.begin_answered(permit)
        return decision

    def unavailable(self, failure: Exception | None, *, first: bool) -> Response:
        """Answer while the store is down: 503, or execute unprotected (``fail_open``)."""
        error = self.store_down(failure, first=first)
        if error is not None:
            return self.problem(error)
        response = self.call()
        response.add_headers([_UNPROTECTED])
        return response

    def replay(self, stored: StoredResponse) -> Response:
        response = Response(stored.status, _text_headers(stored.headers), stored.body or b"")
        response.add_headers([_REPLAYED])
        response.added_headers.clear()  # a replay is all the guard's, not the view's
        response.replayed = True
        return response

    # -- executing and settling ------------------------------------------------------------

    def execute(self) -> Response:
        try:
            response = self.call()
        except Exception:
            self.settle()
            raise
        except BaseException:
            self.emit(ReservationAbandoned)  # Rule 3
            raise
        try:
            self.started(response.status, _byte_headers(response.headers))
            body = response.body
            if type(body) in (list, tuple):
                body = response.body = b"".join(body)  # type: ignore[arg-type]
            if isinstance(body, bytes):
                length = _content_length(response.headers)
                if length is not None and len(body) > length:
                    body = response.body = body[:length]  # as a server sends it
                self.captured(body)
                self.complete = True
                self.settle()
                return response
            response.body = _Capture(self, body, _content_length(response.headers))
        except Exception:
            self.settle()
            raise
        return response

    def settle(self) -> None:
        """Settle the reservation, unless that is done already (see the ASGI ``settle``)."""
        if self.settled:
            return
        assert self.store_key is not None
        outcome = self.outcome()
        health = self.guard.health
        now = self.guard.clock.now()
        permit = health.permit(now)
        try:
            accepted = self.guard.store.finish(self.store_key, self.token, outcome, now)
        except Exception as exc:
            self.finish_failed(permit, exc)  # Rule 4
            return
        except BaseException:
            if permit.call:
                health.abandoned(permit, self.guard.clock.now())
            raise
        self.finished(permit, outcome, accepted)


class _Capture:
    """A streamed body, passed through while it is copied for the record (Rule 2)."""

    __slots__ = ("abandoned", "body", "exchange", "iterator", "left")

    def __init__(self, exchange: _SyncExchange, body: Iterable[bytes], length: int | None) -> None:
        self.exchange = exchange
        self.body = body
        self.iterator: Iterator[bytes] | None = None
        self.left = length
        self.abandoned = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        exchange = self.exchange
        if self.iterator is None:
            self.iterator = iter(self.body)
        try:
            chunk = next(self.iterator)
        except StopIteration:
            exchange.complete = True
            exchange.settle()
            raise
        except Exception:
            exchange.settle()
            raise
        except BaseException:
            if not exchange.settled:
                exchange.emit(ReservationAbandoned)  # Rule 3
            self.abandoned = True
            raise
        if self.left is not None:
            if len(chunk) > self.left:  # beyond the Content-Length: dropped, as servers do
                chunk = chunk[: max(self.left, 0)]
            exchange.captured(chunk)
            self.left -= len(chunk)
            if self.left <= 0 and not exchange.complete:
                # The last byte the client waits for: settled before it goes out, so a
                # retry sent the instant the answer arrives finds the record settled.
                exchange.complete = True
                exchange.settle()
        else:
            exchange.captured(chunk)
        return chunk

    def close(self) -> None:
        """Close the view's body, then settle (an unfinished body: by ``on_server_error``)."""
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if not self.abandoned:
                self.exchange.settle()


def _content_length(headers: Iterable[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None
