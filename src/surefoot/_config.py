"""Configuration files: read TOML with line numbers, validate with pydantic, report every problem.

The toolkit of every configuration of the project (the gateway's policy file, client
integrations, fault plans, drill scenarios). A configuration is read by ``read_toml`` (its
data and its lines); its schema, plain pydantic models in a ``_schema.py`` of its own
package imported only when a file is read, is applied by ``Problems.validated``; what a
constructor refuses afterwards is added by ``Problems.refused``; ``raise_if_any`` raises
everything found as one ``ConfigurationError``::

    policy.toml:12: upstream.connect_timout: unknown field (did you mean 'connect_timeout'?)
    policy.toml: 2 problems in the gateway configuration:
      policy.toml:3: server.port: expected a port number 0-65535, got 70000
      policy.toml:9: routes[0].timeout: expected seconds > 0, got -1

Rule 1: every pydantic error is explained here, from the schema alone: the message says what
        the field expects (its ``description``, given with ``described``), what it got, and
        where, as the file writes it (a discriminated union's tag never appears in the path).
        An unknown field names the closest known one or lists them all; a missing one says
        what it expects; a ``ValueError`` of a validator is its own message; a table of the
        wrong type expects "a table", or the field's description when that describes the
        table ("a table of header names to text values").
Rule 2: a field ``described(..., mask="secret")`` is never quoted, only its kind
        (``got an integer (hidden)``); one ``mask="url"`` is quoted with its password and
        secret query parameters masked (``surefoot._masking``, Rule 1).
Rule 3: line numbers are best effort: a problem is reported at the line that sets its value,
        else at its nearest table's header (``[[chaos.rules]]`` headers count up, so
        ``chaos.rules[2].seconds`` is found under the third).
Rule 4: pydantic is imported by the schemas, and by this module only when it validates,
        never at import time: a package whose configuration is optional imports its schema
        when a file is read.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import re
import tomllib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from surefoot._masking import masked_url, shown
from surefoot.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic import BaseModel

    Model = TypeVar("Model", bound=BaseModel)

__all__ = ["Loc", "Problems", "described", "read_toml", "require_pydantic"]

#: A place in a configuration: table and field names, and array indices.
Loc = tuple[str | int, ...]

_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'|[\s.])+?)\s*=")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
#: A constructor's refusal: ``CircuitBreaker.open_wait: expected ...`` (``Class 'name'.field``
#: and ``field[index]`` too).
_REFUSAL = re.compile(r"^[A-Za-z]+(?: '[^']*')?\.([a-z_]+)(?:\[[^\]]*\])?: (.*)$", re.S)


def read_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str, list[str]]:
    """The parsed file, its name for messages, and its lines.

    Raises:
        ConfigurationError: the file cannot be read, is not UTF-8, or is not TOML (with
            its line and column).
    """
    source = os.fspath(path)
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read the file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{source}: expected UTF-8 text (TOML), got byte {raw[exc.start]:#04x} "
            f"at offset {exc.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _POSITION.search(message)
        prefix = source
        if where is not None:
            message = message[: where.start()].rstrip()
            prefix = f"{source}:{where.group(1)}:{where.group(2)}"
        raise ConfigurationError(f"{prefix}: invalid TOML: {message}") from None
    return data, source, text.splitlines()


def require_pydantic(what: str) -> None:
    """Raise a one-line ``ConfigurationError`` naming the extra when pydantic is missing;
    ``what`` names the feature needing it ("drill scenarios")."""
    try:
        import pydantic  # noqa: F401
    except ModuleNotFoundError as exc:  # pragma: no cover - pydantic comes with the extra
        raise ConfigurationError(f"{what} need pydantic: pip install 'surefoot[client]'") from exc


def described(
    expected: str,
    default: Any = ...,
    *,
    mask: Literal["secret", "url"] | None = None,
    **options: Any,
) -> Any:
    """A schema field: ``expected`` completes "expected ..., got ..." in messages.

    Example:
        >>> class Admin(BaseModel):
        ...     port: int = described("a port number 0-65535", 8081, ge=0, le=65535)
        ...     token: str | None = described("the bearer token", None, mask="secret")

    ``options`` go to ``pydantic.Field`` (bounds, ``default_factory``...); ``mask``
    masks the field's value in messages (Rule 2).
    """
    from pydantic import Field

    if default is not ...:
        options["default"] = default
    extra: Any = {"mask": mask} if mask is not None else None
    return Field(description=expected, json_schema_extra=extra, **options)


class Problems:
    """Every problem found in one configuration, each ``file:line: path: message``;
    raised together as one ``ConfigurationError``.

    Args:
        source: the file's name (or ``<dict>``), first in every message.
        lines: the file's lines, for line numbers (None: none, as for parsed data).
        table: what the configuration is, for the summary line ("the gateway configuration").
    """

    def __init__(self, source: str, lines: Sequence[str] | None, table: str) -> None:
        self.source = source
        self._lines = lines
        self._table = table
        self.items: list[str] = []

    def add(self, loc: Loc, message: str) -> None:
        """One problem at ``loc`` (a problem found twice is listed once)."""
        line = _locate(self._lines, loc) if self._lines is not None else None
        where = self.source if line is None else f"{self.source}:{line}"
        item = f"{where}: {dotted(loc)}: {message}"
        if item not in self.items:
            self.items.append(item)

    def validated(self, model: type[Model], data: Mapping[str, Any], *, at: Loc = ()) -> Model:
        """``data`` validated by ``model``, found at ``at`` in the file.

        Raises:
            ConfigurationError: ``data`` is invalid; it lists every pydantic error (Rule 1)
                with every problem added before.
        """
        from pydantic import ValidationError

        try:
            return model.model_validate(dict(data))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc, message = _explain(model, error)
                self.add((*at, *loc), message)
        self.raise_if_any()
        raise AssertionError("unreachable")  # pragma: no cover - errors were added

    def refused(
        self, loc: Loc, exc: Exception, fields: Collection[str], *, here: bool = False
    ) -> None:
        """A constructor's refusal of a validated table at ``loc``: its message
        ``Class.field: expected ...`` is reported at ``loc.field`` (``here``: at ``loc``)
        when ``field`` is one of ``fields`` (the table's), else whole at ``loc``."""
        message = str(exc)
        match = _REFUSAL.match(message)
        if match is not None and match.group(1) in fields:
            self.add(loc if here else (*loc, match.group(1)), match.group(2))
        else:
            self.add(loc, message)

    def raise_if_any(self) -> None:
        """Raise every problem found as one ``ConfigurationError`` (none: return)."""
        if not self.items:
            return
        if len(self.items) == 1:
            raise ConfigurationError(self.items[0])
        listed = "\n".join(f"  {item}" for item in self.items)
        raise ConfigurationError(
            f"{self.source}: {len(self.items)} problems in {self._table}:\n{listed}"
        )


def dotted(loc: Sequence[str | int]) -> str:
    """``loc`` as the file writes it: ``chaos.rules[2].seconds``, odd keys quoted."""
    return "".join(
        f"[{part}]" if isinstance(part, int) else ("." if i else "") + _key(part)
        for i, part in enumerate(loc)
    )


# -- explaining pydantic's errors (Rule 1) ------------------------------------------------------


def _explain(root: type[BaseModel], error: Mapping[str, Any]) -> tuple[Loc, str]:
    """A pydantic error as (its place in the file, a message for the person editing it)."""
    kind = error["type"]
    at = _walk(root, error["loc"])
    path = tuple(at.path)
    info = at.owner.model_fields.get(at.field) if at.field is not None else None
    expected = info.description if info is not None else None
    got = _got(error.get("input"), info)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(at.tags)
        tag = at.discriminator or ""
        if kind == "union_tag_not_found":
            return (*path, tag), f"required, missing (expected one of {tags})"
        return (*path, tag), f"expected one of {tags}, got {shown(error['ctx']['tag'])}"
    if kind == "extra_forbidden":
        allowed = sorted(at.owner.model_fields)
        close = difflib.get_close_matches(str(at.field), allowed, n=1)
        if close:
            return path, f"unknown field (did you mean {close[0]!r}?)"
        return path, f"unknown field; expected one of {', '.join(allowed)}"
    if kind == "missing":
        wanted = f" (expected {expected})" if expected else ""
        return path, f"required, missing{wanted}"
    if kind == "value_error":
        return path, str(error.get("ctx", {}).get("error", error["msg"]))
    table = kind in ("model_type", "model_attributes_type", "dict_type")
    if table and (kind != "dict_type" or not (expected or "").startswith("a table")):
        expected = "a table"
    if expected is None:
        return path, f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got}"
    return path, f"expected {expected}, got {got}"


def _got(value: Any, info: Any) -> str:
    """A value as a message quotes it, masked as its field says (Rule 2)."""
    extra = info.json_schema_extra if info is not None else None
    how = extra.get("mask") if isinstance(extra, dict) else None
    if how == "url" and isinstance(value, str):
        return shown(masked_url(value))
    return shown(value, secret=how is not None)


class _Place:
    """Where an error's location leads in the schema."""

    def __init__(self, root: type[BaseModel]) -> None:
        self.path: list[str | int] = []  # the location as the file writes it
        self.owner = root  # the model of the last field named, and that field
        self.field: str | None = None
        self.discriminator: str | None = None  # of the union the location ends at
        self.tags: tuple[str, ...] = ()  # that union's tags, in the schema's order


def _walk(root: type[BaseModel], loc: Sequence[str | int]) -> _Place:
    """Follow ``loc`` through the schema: fields, array indices, table keys, union tags."""
    from pydantic import BaseModel

    place = _Place(root)
    node: Any = root
    discriminator: str | None = None
    for part in (*loc, None):
        node, found = _bare(node)
        discriminator = found or discriminator
        members = _members(node)
        if part is None:
            if members:
                place.discriminator = discriminator
                place.tags = tuple(_tags(members, discriminator))
            break
        if isinstance(node, type) and issubclass(node, BaseModel):
            place.path.append(part)
            place.owner, place.field = node, str(part)
            info = node.model_fields.get(str(part))
            node = info.annotation if info is not None else None
            discriminator = info.discriminator if info is not None else None  # type: ignore[assignment]
        elif members:
            tagged = dict(zip(_tags(members, discriminator), members, strict=True))
            by_name = {member.__name__: member for member in members}
            node = tagged.get(str(part)) or by_name.get(str(part))
            if node is None:
                place.path.append(part)
        else:
            place.path.append(part)
            origin = typing.get_origin(node)
            args = typing.get_args(node)
            if origin in (list, tuple, set, frozenset) and args:
                node = args[0]
            elif origin in (dict, Mapping) and len(args) == 2:
                node = args[1]  # a key of a table of tables
            else:
                node = None
    return place


def _bare(node: Any) -> tuple[Any, str | None]:
    """``node`` without ``Annotated`` and ``None``, and a discriminator met on the way."""
    discriminator = None
    while True:
        if typing.get_origin(node) is typing.Annotated:
            for meta in node.__metadata__:
                found = getattr(meta, "discriminator", None)
                discriminator = found if isinstance(found, str) else discriminator
            node = typing.get_args(node)[0]
        elif typing.get_origin(node) in (typing.Union, types.UnionType):
            rest = [arg for arg in typing.get_args(node) if arg is not type(None)]
            if len(rest) != 1:
                return node, discriminator
            node = rest[0]
        else:
            return node, discriminator


def _members(node: Any) -> list[type[BaseModel]]:
    """The models of a union of models, in order (none for anything else)."""
    from pydantic import BaseModel

    if typing.get_origin(node) not in (typing.Union, types.UnionType):
        return []
    return [
        arg for arg in typing.get_args(node) if isinstance(arg, type) and issubclass(arg, BaseModel)
    ]


def _tags(members: Sequence[type[BaseModel]], discriminator: str | None) -> list[str]:
    """Each member's tag: its ``Literal`` discriminator value, else its class name."""
    tags = []
    for member in members:
        info = member.model_fields.get(discriminator) if discriminator else None
        values = typing.get_args(info.annotation) if info is not None else ()
        tags.append(str(values[0]) if values else member.__name__)
    return tags


# -- line numbers (Rule 3) -----------------------------------------------------------------------


def _key(part: str) -> str:
    """A key as TOML writes it in a dotted path: bare if it can be, else quoted."""
    return part if _BARE.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'


def _locate(lines: Sequence[str], loc: Sequence[str | int]) -> int | None:
    """The line (1-based) that sets ``loc``, else that of its nearest table; best effort.

    Reads table headers and ``key = value`` lines (dotted and quoted keys included).
    Array-of-tables headers (``[[chaos.rules]]``) count up, so ``chaos.rules[2].seconds``
    is found under the third one. Multi-line values, inline tables and arrays are
    reported at their key.
    """
    best, best_length = None, 0
    table: tuple[str | int, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(stripped)
        if header is not None:
            keys = _dotted_key(header.group(2))
            if header.group(1) == "[[":
                arrays[keys] = arrays.get(keys, -1) + 1
                table = (*_indexed(keys[:-1], arrays), keys[-1], arrays[keys])
            else:
                # A sub-table of an array element ([routes.lookup] after [[routes]]).
                table = _indexed(keys, arrays)
            path = table
        else:
            key = _KEY.match(stripped)
            if key is None:
                continue
            path = (*table, *_dotted_key(key.group(1)))
        if len(path) > best_length and tuple(loc[: len(path)]) == path:
            best, best_length = number, len(path)
    return best


def _indexed(keys: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> tuple[str | int, ...]:
    """``keys`` with the current element index after each array-of-tables prefix."""
    out: list[str | int] = []
    for i, key in enumerate(keys):
        out.append(key)
        if keys[: i + 1] in arrays:
            out.append(arrays[keys[: i + 1]])
    return tuple(out)


def _dotted_key(key: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)", key)
    return tuple(next(p for p in groups if p) if any(groups) else "" for groups in parts)
