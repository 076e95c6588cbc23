"""The shop's URLs."""

from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("v1/charges", views.charge),
    path("v1/products", views.Products.as_view()),
]
