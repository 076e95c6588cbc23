"""``transactional_claim``: ``TransactionalKeys`` inside Django's ``transaction.atomic()``.

The key row and its response are written through Django's own database connection
(``connection.connection``: a ``sqlite3.Connection``, or a ``psycopg.Connection`` with the
psycopg 3 backend), in the view's own transaction, so they commit with the business writes
or not at all (``surefoot.idempotency.transactional``)::

    @transaction.atomic
    def create_order(request):
        claim = transactional_claim(request)
        if claim.replay is not None:
            return claim.replay                      # the first response, byte for byte
        order = Order.objects.create(...)
        return claim.complete(JsonResponse({"id": order.pk}, status=201))

Rule 1: a claim is made only inside an ``atomic`` block of the connection it writes
        through; outside one it is a ``RuntimeError`` (nothing would hold it).
Rule 2: the principal is ``settings.SUREFOOT``'s identity of the request (its credential,
        the authenticated user, or the address), the key its ``Idempotency-Key`` header
        (``keys.header``), the fingerprint its method, path and body.
Rule 3: ``complete`` stores the view's status, headers and body and returns the response as
        stored (``Content-Type`` kept), which every retry then receives byte for byte; a
        replay carries ``Idempotent-Replayed: true``.
Rule 4: on SQLite a concurrent duplicate waits for the first only when the transaction
        begins with ``BEGIN IMMEDIATE``: set ``DATABASES[...]["OPTIONS"]["transaction_mode"]
        = "IMMEDIATE"`` (Django 5.1+); otherwise it fails with ``StoreUnavailable`` (503),
        never executing twice. Errors (400, 409, 422, 503) are ``SurefootError``s:
        ``ProblemMiddleware`` answers them as problem+json.
Rule 5: the claim runs in a savepoint (``transaction.atomic(using=...)`` nested), so an
        error caught in the view leaves its transaction usable (on PostgreSQL a failed
        statement would abort it).
Rule 6: ``complete`` stores a streamed response (``FileResponse``,
        ``StreamingHttpResponse``) joined, up to ``MAX_JOINED`` bytes (more is a
        ``TypeError``: stream it from a view without a claim); ``Set-Cookie`` lines are
        stored and sent one by one.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, transaction
from django.http import (
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)

from surefoot.django._responses import request_of
from surefoot.django._settings import cached, surefoot_settings
from surefoot.idempotency import Claim, StoredResponse, TransactionalKeys

__all__ = ["TransactionalClaim", "transactional_claim"]

_REPLAYED = "Idempotent-Replayed"
#: The largest streamed body ``complete`` joins to store (Rule 6).
MAX_JOINED = 1024 * 1024


class TransactionalClaim:
    """A key claimed in the view's transaction.

    Attributes:
        claim: the underlying ``surefoot.idempotency.Claim``.
        store_key: the scoped key (what an operator looks up).
        replay: the earlier response to send again (an ``HttpResponse``), or None when
            this request executes and then calls ``complete``.
    """

    __slots__ = ("claim", "replay", "store_key")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.store_key = claim.store_key
        self.replay = None if claim.replay is None else _response(claim.replay, replayed=True)

    def complete(self, response: HttpResponseBase) -> HttpResponse:
        """Record ``response`` in the transaction (before it commits) and return it as
        stored: send what this returns (Rule 3)."""
        content = _content(response)
        headers = [(str(k), str(v)) for k, v in response.items()]
        headers.extend(
            ("Set-Cookie", c.output(header="").strip()) for c in response.cookies.values()
        )
        return _response(self.claim.complete(response.status_code, headers, content))


def _content(response: HttpResponseBase) -> bytes:
    """The body of ``response``, a streamed one joined within ``MAX_JOINED`` (Rule 6)."""
    if isinstance(response, HttpResponse):
        return bytes(response.content)
    if not isinstance(response, StreamingHttpResponse):
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.streaming_content:
            size += len(chunk)
            if size > MAX_JOINED:
                raise TypeError(
                    f"TransactionalClaim.complete: the streamed response is larger than "
                    f"{MAX_JOINED} bytes; store a smaller answer (a receipt, a URL) and "
                    "stream the file from a view without a claim"
                )
            chunks.append(bytes(chunk))
    finally:  # its file closed; not response.close(): that ends the request (and the DB)
        closers, response._resource_closers = response._resource_closers, []
        for close in closers:
            close()
    return b"".join(chunks)


def _response(stored: StoredResponse, *, replayed: bool = False) -> HttpResponse:
    out = HttpResponse(stored.body or b"", status=stored.status)
    names = {name.lower() for name, _ in stored.headers}
    if b"content-type" not in names:
        del out["Content-Type"]
    for name, value in stored.headers:
        if name.lower() == b"set-cookie":
            out.cookies.load(value.decode("latin-1"))
        else:
            out[name.decode("latin-1")] = value.decode("latin-1")
    if replayed:
        out[_REPLAYED] = "true"
    return out


def transactional_claim(
    request: Any,
    *,
    keys: TransactionalKeys | None = None,
    using: str = "default",
    principal: str | None = None,
    key: str | None = None,
) -> TransactionalClaim:
    """Claim the request's idempotency key in the open ``atomic`` block of ``using``.

    Example:
        >>> with transaction.atomic():
        ...     claim = transactional_claim(request)

    Args:
        request: the Django (or DRF) request.
        keys: the ``TransactionalKeys`` (table, ttl, scope...); default one per process.
        using: the database alias whose transaction holds the claim.
        principal: who is calling (default: ``settings.SUREFOOT``'s identity, Rule 2).
        key: the key (default: the request's ``keys.header`` header).

    Raises:
        RuntimeError: no ``atomic`` block is open on ``using`` (Rule 1).
        IdempotencyKeyMissing, IdempotencyKeyInvalid, IdempotencyKeyReused,
        IdempotencyRequestInProgress, IdempotencyOutcomeUnknown, StoreUnavailable:
            as ``TransactionalKeys.claim``.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError(
            f"transactional_claim runs inside transaction.atomic(using={using!r}): "
            "the key must commit with the view's writes"
        )
    if keys is None:
        keys = cached("transactional_keys", lambda settings: TransactionalKeys())
    django_request = getattr(request, "_request", request)
    if principal is None:
        scope = request_of(request, body=False).scope
        principal = surefoot_settings().identity(scope)
    if key is None:
        key = django_request.headers.get(keys.header)
    connection.ensure_connection()
    with transaction.atomic(using=using):  # Rule 5: a savepoint
        claim = keys.claim(
            connection.connection,
            principal=principal,
            key=key,
            method=django_request.method,
            path=django_request.get_full_path(),
            payload=django_request.body,
        )
    return TransactionalClaim(claim)
