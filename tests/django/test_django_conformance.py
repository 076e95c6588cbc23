"""The WSGI conformance table (``tests/wsgi/test_conformance.py``, shared with the ASGI
middlewares) run over a third stack: Django's ``WSGIHandler`` with ``surefoot.django``'s
middlewares in front of the same backend as a Django view."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_conformance as table
from _django_stack import DjangoStack
from _wsgi_stacks import Backend

# Every test of the table that takes the ``stack`` fixture (the others compare two stacks).
for _name in dir(table):
    if _name.startswith("test_") and "stack" in table.__dict__[_name].__code__.co_varnames:
        globals()[_name] = table.__dict__[_name]


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[DjangoStack]:
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("chunked"):
        # Django reads a body by its Content-Length only: a chunked body is b"" to Django's
        # views and to the guard alike (WSGIRequest), so there is nothing over the bound.
        pytest.skip("Django reads no chunked request body")
    with DjangoStack() as django_stack:
        yield django_stack


@pytest.fixture
def backend() -> Backend:
    return Backend()
