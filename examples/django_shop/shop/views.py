"""The shop's views: a charge (idempotency keys, from the middleware) and a product list
(Django REST framework, throttled by ``SurefootThrottle``)."""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar

from django.http import HttpResponse, JsonResponse
from rest_framework.response import Response
from rest_framework.views import APIView

from surefoot.django import SurefootThrottle


def charge(request: Any) -> HttpResponse:
    """``POST /v1/charges``: charge once per key (``IdempotencyMiddleware``)."""
    order = json.loads(request.body or b"{}")
    return JsonResponse(
        {"id": f"ch_{uuid.uuid4().hex[:12]}", "amount": order.get("amount"), "status": "paid"},
        status=201,
    )


class ProductsThrottle(SurefootThrottle):
    """Five product listings a minute per client, counted in the shared store."""

    rate = "5/minute"


class Products(APIView):
    """``GET /v1/products``: a DRF view that keeps its ``throttle_classes``."""

    throttle_classes: ClassVar[list[Any]] = [ProductsThrottle]

    def get(self, request: Any) -> Response:
        return Response([{"sku": "mug", "price": 1200}, {"sku": "tee", "price": 2500}])
