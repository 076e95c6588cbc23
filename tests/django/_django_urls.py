"""The URLs of the tests' Django project."""

from __future__ import annotations

import _django_views as views
from django.urls import path

urlpatterns = [
    path("charges", views.charge),
    path("stream", views.stream),
    path("unknown", views.unknown),
    path("feed", views.feed),
    path("limited", views.limited),
    path("decorated", views.decorated),
    path("both", views.both),
    path("decorated-limited", views.decorated_limited),
    path("drf/items", views.Items.as_view()),
    path("orders", views.order),
    path("pg/orders", views.order, {"alias": "pg"}),
]
