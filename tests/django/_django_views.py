"""The views of the Django project the tests run (test client and gunicorn alike).

Every execution of a protected view is recorded: in ``EXECUTIONS`` (this process), and in
the ledger file ``SUREFOOT_TEST_LEDGER`` names when set (gunicorn's workers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from django.db import connections, transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.response import Response as DRFResponse
from rest_framework.views import APIView

from _support import record_execution
from surefoot.django import (
    SurefootThrottle,
    idempotent,
    rate_limit,
    transactional_claim,
)
from surefoot.idempotency import TransactionalKeys

EXECUTIONS: list[tuple[str, bytes]] = []
#: ``TransactionalKeys`` per database alias (a test's own table on PostgreSQL).
KEYS: dict[str, TransactionalKeys] = {}


def _executed(name: str, request: Any) -> None:
    EXECUTIONS.append((name, request.body))
    ledger = os.environ.get("SUREFOOT_TEST_LEDGER")
    if ledger:
        record_execution(Path(ledger), name, request.headers.get("Idempotency-Key", "-"))


def charge(request: Any) -> HttpResponse:
    _executed("charge", request)
    return JsonResponse({"charged": True, "pid": os.getpid()}, status=201)


def stream(request: Any) -> StreamingHttpResponse:
    _executed("stream", request)

    def chunks() -> Iterator[bytes]:
        yield b'{"streamed":'
        yield b"true}"

    return StreamingHttpResponse(chunks(), status=201, content_type="application/json")


def feed(request: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"a", b"b"]), content_type="text/plain")


def unknown(request: Any) -> HttpResponse:
    _executed("unknown", request)
    return HttpResponse(b"boom", status=500)


def limited(request: Any) -> HttpResponse:
    return JsonResponse({"ok": True}, status=201)


@idempotent(required=True)
def decorated(request: Any) -> HttpResponse:
    _executed("decorated", request)
    return JsonResponse({"decorated": True}, status=201)


@idempotent(required=True)
def both(request: Any) -> HttpResponse:
    _executed("both", request)
    return JsonResponse({"both": True}, status=201)


@rate_limit("2/minute")
def decorated_limited(request: Any) -> HttpResponse:
    return JsonResponse({"ok": True})


class ItemsThrottle(SurefootThrottle):
    rate = os.environ.get("SUREFOOT_TEST_DRF_RATE", "3/minute")


class Items(APIView):
    throttle_classes: ClassVar[list[Any]] = [ItemsThrottle]
    authentication_classes: ClassVar[list[Any]] = []
    permission_classes: ClassVar[list[Any]] = []

    def get(self, request: Any) -> DRFResponse:
        return DRFResponse({"items": [1, 2, 3]})


def order(request: Any, alias: str = "default") -> HttpResponse:
    """A transactional view: the order row and the key's response commit together.
    ``?fail=1`` raises after the order is written (the transaction rolls back)."""
    with transaction.atomic(using=alias):
        claim = transactional_claim(request, keys=KEYS.get(alias), using=alias)
        if claim.replay is not None:
            return claim.replay
        _executed("order", request)
        with connections[alias].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ORDERS[alias]} (body) VALUES (%s)", [request.body.decode()]
            )
        if request.GET.get("fail"):
            raise RuntimeError("the view failed after writing")
        payload = json.loads(request.body)
        return claim.complete(JsonResponse({"order": payload["item"]}, status=201))


#: The business table of ``order`` per alias.
ORDERS: dict[str, str] = {"default": "shop_orders"}
