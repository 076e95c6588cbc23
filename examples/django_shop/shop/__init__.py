"""The shop's Django project: settings, URLs, views and the WSGI app."""

from __future__ import annotations
