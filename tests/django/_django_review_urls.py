"""The views of ``test_django_review.py`` (its own URL conf): CSRF-protected, slashed,
multipart, throttled twice, rate limited by a settings policy, transactional streams."""

from __future__ import annotations

import io
from typing import Any, ClassVar

from django.db import transaction
from django.http import FileResponse, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response as DRFResponse
from rest_framework.views import APIView

from surefoot.django import SurefootThrottle, idempotent, rate_limit, transactional_claim

EXECUTED: list[str] = []


def charge(request: Any) -> HttpResponse:  # CSRF-protected
    EXECUTED.append("charge")
    return JsonResponse({"n": len(EXECUTED)}, status=201)


@csrf_exempt
def open_charge(request: Any) -> HttpResponse:
    EXECUTED.append("open")
    return JsonResponse({"user": getattr(request.user, "username", None)}, status=201)


@csrf_exempt
def login(request: Any) -> HttpResponse:
    return HttpResponse(b"welcome")


@csrf_exempt
@idempotent(required=True)
def refund(request: Any) -> HttpResponse:
    EXECUTED.append("refund")
    return JsonResponse({"refunded": True}, status=201)


@idempotent(required=True)
def upload(request: Any) -> HttpResponse:  # CSRF-protected: the middleware reads POST
    EXECUTED.append("upload")
    return JsonResponse({"got": request.POST.get("a")}, status=201)


@rate_limit(policy="api")
def export(request: Any) -> HttpResponse:
    return JsonResponse({"ok": True})


class Strict(SurefootThrottle):
    rate = "2/minute"


class Loose(SurefootThrottle):
    rate = "100/minute"


class Twice(APIView):
    throttle_classes: ClassVar[list[Any]] = [Strict, Loose]
    authentication_classes: ClassVar[list[Any]] = []
    permission_classes: ClassVar[list[Any]] = []

    def get(self, request: Any) -> DRFResponse:
        return DRFResponse({"ok": True})


@csrf_exempt
@transaction.atomic
def receipt(request: Any) -> HttpResponse:
    claim = transactional_claim(request)
    if claim.replay is not None:
        return claim.replay
    EXECUTED.append("receipt")
    response = FileResponse(io.BytesIO(b"receipt-pdf-bytes"), filename="r.pdf")
    response.set_cookie("cart", "abc")
    return claim.complete(response)


urlpatterns = [
    path("charge", charge),
    path("open", open_charge),
    path("slashed/", open_charge),
    path("accounts/login/", login),
    path("refund", refund),
    path("upload", upload),
    path("export", export),
    path("twice", Twice.as_view()),
    path("receipt", receipt),
]
