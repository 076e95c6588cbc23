"""Route templates: ``"POST /v1/charges/{id}"`` matched against a request's method and path.

A template is an optional method (or ``*``), then a path where ``{name}`` matches one
segment, ``{name:path}`` the rest of the path, and a trailing ``*`` any suffix.
Templates are tried in the order given; the first match wins.

Paths are matched in their canonical form (``surefoot._paths``, done before any layer
matches), and the spellings that form keeps as sent still match the same templates: a
limit or a key requirement attached to a route holds for every spelling of it.

Rule 1: matching ignores case: ``/Charges`` matches ``POST /charges``.
Rule 2: matching ignores one trailing slash, on the path and on the template: ``/charges/``
        matches ``/charges``; ``/v1`` matches ``/v1/*`` and ``/files/{rest:path}`` (whose
        ``rest`` is then ``""``), as ``/v1/`` does.
Rule 3: ``HEAD`` matches templates declared for ``GET`` (most frameworks run the ``GET``
        handler for it).
Rule 4: ``match_params`` returns parameter values as they were sent (case and all).
Rule 5: a template that takes protection away (a rate-limit exemption, a route left without
        idempotency) is *strict*: it matches only its own spelling, case and trailing slash
        included. Rules 1 and 2 widen what a template covers, which is only ever more
        protective for a limit or a requirement, but would exempt what a case-sensitive
        upstream serves as another resource (``GET /users/me`` exempt, ``/users/ME``
        served by ``/users/{id}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from surefoot.errors import ConfigurationError

__all__ = ["RouteTable", "match_form"]

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    template: str
    methods: frozenset[str] | None  # None: any method
    pattern: re.Pattern[str]
    value: T


class RouteTable(Generic[T]):
    """An ordered list of (template, value) pairs with a first-match lookup.

    Args:
        entries: (template, value) pairs, tried in order.
        strict: ``value -> bool``: whether an entry takes protection away and so matches
            only its own spelling (Rule 5); default: no entry is strict.
    """

    def __init__(
        self, entries: Iterable[tuple[str, T]], *, strict: Callable[[T], bool] | None = None
    ) -> None:
        self._routes = [
            _compile(template, value, strict=strict is not None and strict(value))
            for template, value in entries
        ]

    def match(self, method: str, path: str) -> tuple[str, T] | None:
        """The first (template, value) whose method and path match, or None."""
        for route in self._routes:
            methods = route.methods
            if (methods is None or method in methods) and route.pattern.fullmatch(path):
                return route.template, route.value
        return None

    def match_params(self, method: str, path: str) -> tuple[str, T, dict[str, str]] | None:
        """Like ``match``, with the values of the template's ``{name}`` parameters."""
        for route in self._routes:
            if route.methods is None or method in route.methods:
                found = route.pattern.fullmatch(path)
                if found is not None:
                    return route.template, route.value, found.groupdict("")
        return None

    def __len__(self) -> int:
        return len(self._routes)


def match_form(path: str) -> str:
    """The one string all the spellings of ``path`` that match alike share (Rules 1 and 2):
    for keys scoped by a path no template names."""
    lowered = path.lower()
    return lowered[:-1] if len(lowered) > 1 and lowered.endswith("/") else lowered


def _compile(template: str, value: T, *, strict: bool = False) -> _Route[T]:
    prefix, _, path = template.strip().rpartition(" ")
    method = prefix.strip().upper()
    if not path.startswith("/"):
        raise ConfigurationError(
            f"route {template!r}: expected '[METHOD ]/path', with a path that starts with '/'"
        )
    if path.endswith("/") and not strict:  # Rule 2: "/" becomes "", matched by "/?" below
        path = path[:-1]
    regex: list[str] = []
    pos = 0
    for m in _PARAM.finditer(path):
        literal = path[pos : m.start()]
        # Named groups, for ``match_params``; a name used twice keeps its first group.
        name = m.group(1) if f"(?P<{m.group(1)}>" not in "".join(regex) else None
        group = f"(?P<{name}>" if name else "(?:"
        if m.group(2) and m.end() == len(path) and literal.endswith("/") and not strict:
            # Rule 2: "/files/{rest:path}" matches "/files" too.
            regex.append(re.escape(literal[:-1]) + f"(?:/{group}.*))?")
        else:
            regex.append(re.escape(literal) + group + (".*)" if m.group(2) else "[^/]+)"))
        pos = m.end()
    tail = path[pos:]
    if tail.endswith("/*") and not strict:
        regex.append(re.escape(tail[:-2]) + "(?:/.*)?")  # Rule 2: "/v1/*" matches "/v1"
    elif tail.endswith("*"):
        regex.append(re.escape(tail[:-1]) + ".*")
    else:
        regex.append(re.escape(tail))
    if not strict:
        regex.append("/?")  # Rule 2
    if method in ("", "*"):
        methods = None
    elif method == "GET":
        methods = frozenset({"GET", "HEAD"})  # Rule 3
    else:
        methods = frozenset({method})
    flags = 0 if strict else re.IGNORECASE  # Rule 1, or Rule 5
    return _Route(template, methods, re.compile("".join(regex), flags), value)
