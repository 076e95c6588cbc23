"""Route templates: ``"POST /v1/charges/{id}"`` matched against a request's method and path.

A template is an optional method (or ``*``), then a path where ``{name}`` matches one
segment, ``{name:path}`` the rest of the path, and a trailing ``*`` any suffix.
Templates are tried in the order given; the first match wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from surefoot.errors import ConfigurationError

__all__ = ["RouteTable"]

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    template: str
    method: str | None
    pattern: re.Pattern[str]
    value: T


class RouteTable(Generic[T]):
    """An ordered list of (template, value) pairs with a first-match lookup."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._routes = [_compile(template, value) for template, value in entries]

    def match(self, method: str, path: str) -> tuple[str, T] | None:
        """The first (template, value) whose method and path match, or None."""
        for route in self._routes:
            if (route.method is None or route.method == method) and route.pattern.fullmatch(path):
                return route.template, route.value
        return None

    def match_params(self, method: str, path: str) -> tuple[str, T, dict[str, str]] | None:
        """Like ``match``, with the values of the template's ``{name}`` parameters."""
        for route in self._routes:
            if route.method is None or route.method == method:
                found = route.pattern.fullmatch(path)
                if found is not None:
                    return route.template, route.value, found.groupdict()
        return None

    def __len__(self) -> int:
        return len(self._routes)


def _compile(template: str, value: T) -> _Route[T]:
    prefix, _, path = template.strip().rpartition(" ")
    method = prefix.strip().upper()
    if not path.startswith("/"):
        raise ConfigurationError(
            f"route {template!r}: expected '[METHOD ]/path', with a path that starts with '/'"
        )
    regex, pos = [], 0
    for m in _PARAM.finditer(path):
        regex.append(re.escape(path[pos : m.start()]))
        # Named groups, for ``match_params``; a name used twice keeps its first group.
        name = m.group(1) if f"(?P<{m.group(1)}>" not in "".join(regex) else None
        body = ".*" if m.group(2) else "[^/]+"
        regex.append(f"(?P<{name}>{body})" if name else f"(?:{body})")
        pos = m.end()
    tail = path[pos:]
    if tail.endswith("*"):
        regex.append(re.escape(tail[:-1]) + ".*")
    else:
        regex.append(re.escape(tail))
    any_method = method in ("", "*")
    return _Route(template, None if any_method else method, re.compile("".join(regex)), value)
