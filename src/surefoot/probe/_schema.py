"""The schema of ``probe.toml``: plain pydantic models (``surefoot._config``).

Imported only when a probe file is read (``_plan.load_plan``), so ``surefoot.probe`` loads
without pydantic. ``Root`` is the file: one ``[probe]`` table (the safety rules and the
budget) and the ``[[targets]]`` (one endpoint each, its checks and its effect check).
``docs/probe.md`` lists every field; what needs the whole file (hosts against the
allowlist, ``${ENV}``, live-looking keys, side effects) is ``_plan``'s.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surefoot._config import described
from surefoot._masking import masked_url, shown

__all__ = ["CHECK_NAMES", "EffectTable", "ProbeTable", "Root", "TargetTable"]

#: Every check a file may name, in the order a run takes them.
CHECK_NAMES = (
    "replay",
    "lost_response",
    "concurrent",
    "mismatch",
    "no_key",
    "key_lifetime",
    "rate_limit_headers",
    "retry_after",
    "limit_scope",
    "error_format",
    "timeouts",
)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_METHOD = re.compile(r"[A-Z]{1,16}")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
_COUNT = re.compile(r"json:[^\s]+|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|status")
_SECONDS = "a finite number of seconds > 0"


def absolute_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host (``${NAME}`` allowed)."""
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or rest[0] in "/?#":
        raise ValueError(
            f"expected an absolute http:// or https:// URL, got {shown(masked_url(value))}"
        )
    return value


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        _header(name)
    return value


def _header(name: str) -> str:
    if not _HEADER.fullmatch(name):
        raise ValueError(f"expected header names (RFC 9110 tokens), got {shown(name)}")
    return name


def _header_names(value: list[str]) -> list[str]:
    for name in value:
        _header(name)
    return value


def _method(value: str) -> str:
    if not _METHOD.fullmatch(value):
        raise ValueError(f"expected an upper-case method such as 'GET', got {shown(value)}")
    return value


def _optional_url(value: str | None) -> str | None:
    return None if value is None else absolute_url(value)


def _checks(value: list[str]) -> list[str]:
    for name in value:
        if name not in CHECK_NAMES:
            raise ValueError(f"expected checks from {', '.join(CHECK_NAMES)}, got {shown(name)}")
    if len(set(value)) != len(value):
        raise ValueError("expected each check once, got one twice")
    return value


class EffectTable(_Table):
    """``[targets.effect]``: a request that counts what the target's calls created."""

    method: str = described("an upper-case method such as 'GET'", "GET")
    url: str = described("an absolute http:// or https:// URL (a template)", mask="url")
    count: str = described("'json:PATH', 'header:NAME' or 'status'")
    headers: dict[str, str] = described(
        "a table of header names to text values", default_factory=dict, mask="secret"
    )

    _check_method = field_validator("method")(_method)
    _check_url = field_validator("url")(absolute_url)
    _check_names = field_validator("headers")(_headers)

    @field_validator("count")
    @classmethod
    def _count(cls, value: str) -> str:
        if not _COUNT.fullmatch(value):
            raise ValueError(
                "expected 'json:PATH' (a dotted path to a list or a number), 'header:NAME' "
                f"or 'status', got {shown(value)}"
            )
        return value


class TargetTable(_Table):
    """``[[targets]]``: one endpoint of the partner's API and the checks to run on it."""

    name: str = described("a name of letters, digits, '_', '-' and '.' (at most 64)")
    method: str = described("an upper-case method such as 'POST'", "POST")
    url: str = described("an absolute http:// or https:// URL (a template)", mask="url")
    headers: dict[str, str] = described(
        "a table of header names to text values", default_factory=dict, mask="secret"
    )
    body: str | None = described("the request body (a template)", None)
    key_header: Annotated[str, Field(min_length=1)] = described("a header name", "Idempotency-Key")
    checks: list[str] = described(f"a list of checks, from {', '.join(CHECK_NAMES)}", min_length=1)
    concurrency: Annotated[int, Field(ge=2, le=50)] = described("a whole number 2-50", 5)
    key_lifetime: Annotated[float, Field(gt=0, le=86400)] | None = described(
        "seconds > 0, at most 86400", None
    )
    limit_requests: Annotated[int, Field(ge=1, le=1000)] = described(
        "a whole number of requests 1-1000", 50
    )
    alt_headers: dict[str, str] = described(
        "a table of header names to text values (a second credential)",
        default_factory=dict,
        mask="secret",
    )
    slow_url: str | None = described(
        "an absolute http:// or https:// URL (a template)", None, mask="url"
    )
    slow_timeout: Annotated[float, Field(gt=0, le=3600)] | None = described(
        "seconds > 0, at most 3600", None
    )
    effect: EffectTable | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"expected a name of letters, digits, '_', '-' and '.', got {shown(value)}"
            )
        return value

    _check_method = field_validator("method")(_method)
    _check_url = field_validator("url")(absolute_url)
    _check_names = field_validator("headers", "alt_headers")(_headers)
    _check_slow = field_validator("slow_url")(_optional_url)
    _check_key = field_validator("key_header")(_header)
    _check_checks = field_validator("checks")(_checks)


class ProbeTable(_Table):
    """``[probe]``: where the probe may send, how much, and what it refuses."""

    hosts: list[str] = described(
        "a list of 'host:port' the probe may send to, such as ['127.0.0.1:8000']",
        min_length=1,
    )
    max_requests: Annotated[int, Field(ge=1, le=100_000)] = described(
        "a whole number of requests 1-100000", 200
    )
    max_duration: Annotated[float, Field(gt=0, le=86400)] = described(
        "seconds > 0, at most 86400", 120.0
    )
    timeout: Annotated[float, Field(gt=0, le=3600)] = described("seconds > 0, at most 3600", 10.0)
    accept_side_effects: bool = described("true or false", False)
    allow_live_keys: bool = described("true or false", False)
    live_key_patterns: list[str] = described(
        "a list of regular expressions, such as ['^live_']", default_factory=list
    )
    credential_headers: list[str] = described(
        "a list of header names whose values are secrets", default_factory=list
    )
    required: list[str] | None = described(f"a list of checks, from {', '.join(CHECK_NAMES)}", None)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            match = _HOST_PORT.fullmatch(host)
            if match is None or int(match.group(2)) > 65535:
                raise ValueError(
                    f"expected 'host:port' such as '127.0.0.1:8000', got {shown(host)}"
                )
        return value

    @field_validator("live_key_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"expected regular expressions, got {shown(pattern)} ({exc})"
                ) from None
        return value

    _check_credentials = field_validator("credential_headers")(_header_names)

    @field_validator("required")
    @classmethod
    def _required(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _checks(value)


class Root(BaseModel):
    """A probe file: ``[probe]`` and its ``[[targets]]``."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
    probe: ProbeTable = described("a [probe] table")
    targets: list[TargetTable] = described("a list of [[targets]] tables", min_length=1)
